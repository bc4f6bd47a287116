"""Weight-normalized convolutions and the Snake activation, the building blocks of stage 1.

Weight normalization (Salimans & Kingma 2016) keeps a direction `v` and a per-output-channel
gain `g`; the kernel is `g * v / ||v||`. `g` starts at `||v||`, so at initialisation the kernel
equals the plain initialised kernel. Parameters are float32; the convolution runs in `dtype`.
Layout is NWC (batch, length, channels) for 1-D and NHWC for 2-D layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Dtype = jnp.dtype | str

_CONV1D = ("NWC", "WIO", "NWC")
_CONV2D = ("NHWC", "HWIO", "NHWC")
_KERNEL_1D = ("conv_width", "conv_in", "conv_out")
_KERNEL_2D = ("conv_width", "conv_freq", "conv_in", "conv_out")


def same_padding(kernel_size: int, dilation: int = 1) -> tuple[int, int]:
    """(left, right) padding that keeps the length of a stride-1 convolution."""
    total = dilation * (kernel_size - 1)
    return total // 2, total - total // 2


def strided_padding(stride: int) -> tuple[int, int]:
    """Padding of a kernel-2*stride, stride-`stride` convolution so that L -> L // stride exactly.

    Output length is (L + left + right - 2s) // s + 1, which equals L / s when left + right = s.
    """
    return (stride + 1) // 2, stride // 2


def _weight_norm_params(module: nn.Module, shape: tuple[int, ...], names: tuple[str, ...]):
    """Direction v and gain g (one per output channel, last axis), g initialised to ||v||."""
    v = module.param(
        "v", nn.with_logical_partitioning(nn.initializers.lecun_normal(), names), shape, jnp.float32
    )
    norm_axes = tuple(range(len(shape) - 1))

    def g_init(_key, _shape, _dtype=jnp.float32):
        return jnp.sqrt(jnp.sum(jnp.square(v), axis=norm_axes))

    g = module.param("g", nn.with_logical_partitioning(g_init, ("channels",)), (shape[-1],))
    # In float32 whatever the stored dtype (frozen bf16 copies): the norm sums many squares.
    v, g = v.astype(jnp.float32), g.astype(jnp.float32)
    # eps under the sqrt: a direction driven to zero must not give NaN gradients.
    scale = g / jnp.sqrt(jnp.sum(jnp.square(v), axis=norm_axes) + 1e-12)
    return v * scale


def _bias(module: nn.Module, features: int, use_bias: bool):
    if not use_bias:
        return None
    return module.param(
        "bias",
        nn.with_logical_partitioning(nn.initializers.zeros, ("channels",)),
        (features,),
        jnp.float32,
    )


class WNConv1d(nn.Module):
    """Weight-normalized 1-D convolution with explicit (left, right) padding.

    padding=None means "same" for stride 1 and the exact L // stride padding of
    `strided_padding` for kernel 2*stride.
    """

    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    padding: tuple[int, int] | None = None
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, x.shape[-1], self.features)
        kernel = _weight_norm_params(self, shape, _KERNEL_1D)
        pad = self.padding
        if pad is None:
            pad = (
                same_padding(self.kernel_size, self.dilation)
                if self.stride == 1
                else strided_padding(self.stride)
            )
        y = lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(self.stride,),
            padding=(pad,),
            rhs_dilation=(self.dilation,),
            dimension_numbers=_CONV1D,
        )
        bias = _bias(self, self.features, self.use_bias)
        return y if bias is None else y + bias.astype(self.dtype)


class WNConvTranspose1d(nn.Module):
    """Weight-normalized transposed 1-D convolution (upsampling) mapping T -> T * stride exactly.

    Kernel 2*stride, output y[m] = sum_t x[t] w[m + left - t*stride] with left =
    strided_padding(stride)[0]. Computed in polyphase form: output phase r of frame n only sees
    x[n-1], x[n], x[n+1], so one kernel-3 convolution at the input rate with stride*out
    channels gives all phases. This avoids convolving a zero-stuffed input, which costs
    ~stride^2 / 1.5 times more and dominated the decoder's time on CPU.
    """

    features: int
    stride: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    def _polyphase_kernel(self, w: jax.Array) -> jax.Array:
        """(2s, in, out) -> (3, in, s * out): taps over x[n-1], x[n], x[n+1] per phase."""
        s, left = self.stride, strided_padding(self.stride)[0]
        zeros = jnp.zeros_like(w[0])
        phases = []
        for r in range(s):
            a, b = divmod(r + left, s)  # a in {0, 1}
            taps = [zeros, zeros, zeros]
            taps[1 + a] = w[b]  # from x[n + a]
            taps[a] = w[s + b]  # from x[n + a - 1]
            phases.append(jnp.stack(taps))
        return jnp.stack(phases, axis=2).reshape(3, w.shape[1], s * w.shape[2])

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.stride
        w = _weight_norm_params(self, (2 * s, x.shape[-1], self.features), _KERNEL_1D)
        y = lax.conv_general_dilated(
            x.astype(self.dtype),
            self._polyphase_kernel(w).astype(self.dtype),
            window_strides=(1,),
            padding=((1, 1),),
            dimension_numbers=_CONV1D,
        )
        y = y.reshape(x.shape[0], x.shape[1] * s, self.features)
        bias = _bias(self, self.features, self.use_bias)
        return y if bias is None else y + bias.astype(self.dtype)


class WNConv2d(nn.Module):
    """Weight-normalized 2-D convolution (discriminators), NHWC, explicit or "same" padding."""

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Sequence[tuple[int, int]] | None = None
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = _weight_norm_params(self, (kh, kw, x.shape[-1], self.features), _KERNEL_2D)
        pad = self.padding
        if pad is None:
            pad = (same_padding(kh), same_padding(kw))
        y = lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=tuple(self.strides),
            padding=tuple(pad),
            dimension_numbers=_CONV2D,
        )
        bias = _bias(self, self.features, self.use_bias)
        return y if bias is None else y + bias.astype(self.dtype)


# sin and cos in float32 from mul/add/round only (Cephes' sinf/cosf: pi/2 in three parts for
# the quadrant reduction, exact for |x| < 2^16; minimax polynomials on [-pi/4, pi/4]).
_TWO_OVER_PI = np.float32(2 / np.pi)
_PI_OVER_2 = tuple(map(np.float32, (1.5703125, 4.837512969970703125e-4, 7.54978995489188216e-8)))
_SIN = tuple(map(np.float32, (-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4)))
_COS = tuple(map(np.float32, (4.166664568298827e-2, -1.388731625493765e-3, 2.443315711809948e-5)))


def _sin_cos(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sin x, cos x) of float32 x, within 1e-7 of the exact values (jnp.sin: 3e-8)."""
    j = jnp.round(x * _TWO_OVER_PI)
    r = ((x - j * _PI_OVER_2[0]) - j * _PI_OVER_2[1]) - j * _PI_OVER_2[2]
    z = r * r
    s = r + r * z * (_SIN[0] + z * (_SIN[1] + z * _SIN[2]))
    c = 1.0 - 0.5 * z + z * z * (_COS[0] + z * (_COS[1] + z * _COS[2]))
    q = j.astype(jnp.int32) & 3  # quadrant: sin is s, c, -s, -c; cos is c, -s, -c, s
    odd = (q & 1) == 1
    sin, cos = jnp.where(odd, c, s), jnp.where(odd, s, c)
    return jnp.where(q >= 2, -sin, sin), jnp.where((q == 1) | (q == 2), -cos, cos)


@jax.custom_jvp
def fast_sin(x: jax.Array) -> jax.Array:
    """sin of float32 x as `_sin_cos`: XLA:CPU computes jnp.sin one element at a time (a
    libm call), 4-5 times slower than this vectorized polynomial; the Snake activations'
    sines were the largest part of the stage-1 step on CPU."""
    return _sin_cos(x)[0]


@fast_sin.defjvp
def _fast_sin_jvp(primals, tangents):
    s, c = _sin_cos(primals[0])
    return s, c * tangents[0]


def snake_sin(x: jax.Array) -> jax.Array:
    """`fast_sin` for float32 on CPU, else jnp.sin (accelerators: fast, and other dtypes)."""
    if x.dtype == jnp.float32 and jax.default_backend() == "cpu":
        return fast_sin(x)
    return jnp.sin(x)


class Snake(nn.Module):
    """Snake activation x + sin(alpha x)^2 / alpha with a learned alpha per channel.

    Periodic inductive bias for audio (Ziyin et al. 2020, used by BigVGAN / DAC). The 1e-9
    keeps the division finite when an alpha reaches zero. The sine: `snake_sin`.
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        alpha = self.param(
            "alpha",
            nn.with_logical_partitioning(nn.initializers.ones, ("channels",)),
            (x.shape[-1],),
            jnp.float32,
        ).astype(self.dtype)
        x = x.astype(self.dtype)
        return x + jnp.reciprocal(alpha + 1e-9) * jnp.square(snake_sin(alpha * x))
