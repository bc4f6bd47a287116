"""The trainer base: what every stage's trainer shares, and the one interface the train loop,
the eval binary, the latent cache and the benchmarks use.

A stage's trainer subclasses `Trainer` and writes only what is its own: `build` (its modules,
optimizers and frozen weights), `boxed_state` (the state with logical axis names), the train
and eval step functions, and what its validation shows. The base owns the rest: the state's
layout and sharded init, abstract and logical state, the jitted step of each step variant (a
batch without text, the latent cache's batches, the discriminator phase) with explicit
shardings and the donated state, the guarded update and its standard metrics, lowering for
planning, the FLOP count, the parameter count, and the export (in the background too).

Metric names, the same in every stage:
  loss/total          the objective of the model's update; loss/<term> its terms
  grad_norm/model     global gradient norm of the model's update (grad_norm/disc: stage 1's
                      discriminators; grad_norm/<term>: one term alone, stage 1 on log steps)
  skipped/steps       updates skipped so far for non-finite gradients (skipped/disc_steps)
  lr/model            the learning rate of the step (lr/disc)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from f3_jax import exports, flops, parallel
from f3_jax.stages import optim

UPDATE_NAMES = {"model": "skipped/steps", "disc": "skipped/disc_steps"}


class Trainer:
    """Builds one stage's state and jitted step functions on one mesh."""

    headline_metrics: ClassVar[tuple[str, ...]] = ()  # what the validation log line shows
    batch_keys: ClassVar[tuple[str, ...]] = ("audio", "mask")  # the step's inputs
    donated_keys: ClassVar[tuple[str, ...] | None] = None  # state keys a step updates (None: all)
    total_loss_key: ClassVar[str] = "loss/total"

    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh
        self.crop = round(config.data.crop_seconds * config.sample_rate)
        self.build()
        self._abstract, self.shardings = parallel.state_layout(self.boxed_state, mesh)
        self._steps: dict[Hashable, Any] = {}
        self._eval_jit = None
        self.export_layout = exports.layout_of(self.inference_variables, self._abstract)

    # ---- what a stage writes -----------------------------------------------------------
    def build(self) -> None:
        """Modules, optimizers and frozen weights, as attributes."""
        raise NotImplementedError

    def boxed_state(self) -> dict:
        """The initial state, parameters in nn.LogicallyPartitioned boxes (traced, not run)."""
        raise NotImplementedError

    def train_step_fn(self, trained: dict, constants: dict, frozen: dict, batch: dict, *, variant):
        """(trained state, metrics) after one step; pure, jitted by the base."""
        raise NotImplementedError

    def eval_step_fn(self, inputs, frozen: dict, batch: dict):
        """({name: (value (B,), weight (B,))}, outputs) of one validation batch."""
        raise NotImplementedError

    def eval_inputs(self, state: dict):
        """What of the state the eval step reads (default: the inference variables)."""
        return self.inference_variables(state)

    def inference_variables(self, state: dict) -> dict:
        """What the stage's export holds: subtrees of the state."""
        return {"params": state["params"]}

    def trained_params(self, state: dict):
        """The parameters the optimizer trains (what `parameter_count` counts)."""
        return state["params"]

    def variant(self, batch: dict, step: int) -> Hashable:
        """Which compiled step runs this batch at this global step, decided on the host."""
        return None

    def frozen_weights(self) -> dict:
        """Read-only weights of earlier stages and the LLM, arguments of every step."""
        return {}

    def frozen_logical(self) -> dict:
        """The frozen weights' shapes with their logical axis names (boxes), by the keys of
        `frozen_weights`: what memory planning reads."""
        return {}

    def frozen_exports(self) -> list[tuple[str, str]]:
        """(export directory, subdirectory) of earlier stages copied into this export."""
        return []

    def host_batch(self, local: dict) -> dict:
        """This process's numpy batch -> the step's inputs (still numpy)."""
        return {k: local[k] for k in self.batch_keys}

    def step_keys(self, batch: dict) -> tuple[str, ...]:
        """The batch entries the train step reads."""
        return self.batch_keys

    def log_metrics(self, state: dict, batch: dict, step: int) -> dict:
        """Extra diagnostics on log steps."""
        return {}

    def eval_samples(self, writer, step: int, local: dict, outputs, state: dict) -> dict:
        """Audio, images or text of a first validation batch; may return more metrics."""
        return {}

    def step_phases(self) -> list[tuple[int, float]]:
        """(first step, relative cost) of each kind of step, for the progress line's ETA."""
        return [(0, 1.0)]

    @property
    def latent_cache(self):
        """The latent cache training batches come from (stages 2 and 3), or None."""
        return None

    def eval_out_shardings(self):
        return None

    # ---- the update every stage makes --------------------------------------------------
    @staticmethod
    def update(
        name: str, tx: optax.GradientTransformation, schedule, params, opt, grads, skipped, step
    ):
        """The guarded update of one parameter group (`name`: "model" or "disc").

        Returns (params, opt, applied, skipped count, {grad_norm/, skipped/, lr/ metrics}).
        """
        params, opt, applied, grad_norm = optim.guarded_update(tx, params, opt, grads)
        skipped = skipped + 1 - applied.astype(jnp.int32)
        metrics = {
            f"grad_norm/{name}": grad_norm,
            UPDATE_NAMES[name]: skipped,
            f"lr/{name}": schedule(step),
        }
        return params, opt, applied, skipped, metrics

    # ---- state -------------------------------------------------------------------------
    def initial_state(self) -> dict:
        """A freshly initialized state on this mesh (compiled on first use)."""
        return parallel.sharded_init(self.boxed_state, self.mesh, self.shardings)

    def abstract_state(self) -> dict:
        """The state's shapes on this mesh's shardings: the target of a restore."""
        return parallel.abstract_like(self.shardings, self._abstract)

    def logical_state(self) -> dict:
        """The state's shapes with each parameter's logical axis names (boxes)."""
        return jax.eval_shape(self.boxed_state)

    def split_state(self, state: dict) -> tuple[dict, dict]:
        """(donated part a step updates, constant part it only reads)."""
        keys = self.donated_keys or tuple(state)
        return {k: state[k] for k in keys}, {k: v for k, v in state.items() if k not in keys}

    def parameter_count(self) -> int:
        return sum(int(x.size) for x in jax.tree.leaves(self.trained_params(self._abstract)))

    # ---- compiled steps ----------------------------------------------------------------
    def _batch_shardings(self, keys: tuple[str, ...]) -> dict:
        return {k: parallel.batch_sharding(self.mesh, 3 if k == "latents" else 2) for k in keys}

    def _jitted_step(self, variant: Hashable, keys: tuple[str, ...]):
        if (variant, keys) not in self._steps:
            trained_s, constants_s = self.split_state(self.shardings)
            frozen_s = jax.tree.map(lambda x: x.sharding, self.frozen_weights())
            self._steps[variant, keys] = jax.jit(
                functools.partial(self.train_step_fn, variant=variant),
                in_shardings=(trained_s, constants_s, frozen_s, self._batch_shardings(keys)),
                out_shardings=(trained_s, parallel.replicated(self.mesh)),
                donate_argnums=(0,),
            )
        return self._steps[variant, keys]

    def _step_args(self, state: dict, batch: dict, step: int):
        keys = self.step_keys(batch)
        trained, constants = self.split_state(state)
        fn = self._jitted_step(self.variant(batch, step), keys)
        return fn, (trained, constants, self.frozen_weights(), {k: batch[k] for k in keys})

    def train_step(self, state: dict, batch: dict, step: int) -> tuple[dict, dict]:
        """One step at global `step`: (new state, metrics on device)."""
        fn, args = self._step_args(state, batch, step)
        with jax.set_mesh(self.mesh):
            trained, metrics = fn(*args)
        return dict(state, **trained), metrics

    def _jitted_eval_step(self):
        if self._eval_jit is None:
            inputs_s = jax.tree.map(lambda x: x.sharding, self.eval_inputs(self.abstract_state()))
            frozen_s = jax.tree.map(lambda x: x.sharding, self.frozen_weights())
            self._eval_jit = jax.jit(
                self.eval_step_fn,
                in_shardings=(inputs_s, frozen_s, self._batch_shardings(self.batch_keys)),
                out_shardings=self.eval_out_shardings(),
            )
        return self._eval_jit

    def eval_step(self, state: dict, batch: dict):
        """Per-example (value, weight) pairs of each validation metric, and outputs."""
        batch = {k: batch[k] for k in self.batch_keys}
        with jax.set_mesh(self.mesh):
            return self._jitted_eval_step()(self.eval_inputs(state), self.frozen_weights(), batch)

    def lower_train_step(self, batch: dict, step: int = 0, **lower_kwargs):
        """The train step at `step` for `batch` (arrays or ShapeDtypeStructs) lowered from the
        abstract state: compile it for its memory and cost analysis, or lower it for another
        platform (lowering_platforms=...)."""
        fn, args = self._step_args(self.abstract_state(), batch, step)
        with parallel.mesh_context(self.mesh):
            return fn.trace(*args).lower(**lower_kwargs)

    def lower_eval_step(self, batch: dict, **lower_kwargs):
        """The eval step for `batch` (arrays or ShapeDtypeStructs) lowered from the abstract
        state, as `lower_train_step` lowers the train step."""
        args = (self.eval_inputs(self.abstract_state()), self.frozen_weights())
        batch = {k: batch[k] for k in self.batch_keys}
        with parallel.mesh_context(self.mesh):
            return self._jitted_eval_step().trace(*args, batch).lower(**lower_kwargs)

    def step_flops(self, state: dict, batch: dict, step: int) -> float:
        """Per-device FLOPs of one train step (f3_jax.flops: matrix products and convolutions
        from its jaxpr, every scanned iteration), divided by the mesh's devices."""
        keys = self.step_keys(batch)
        trained, constants = self.split_state(state)
        fn = functools.partial(self.train_step_fn, variant=self.variant(batch, step))
        sub = {k: batch[k] for k in keys}
        return flops.step_flops(fn, self.mesh, trained, constants, self.frozen_weights(), sub)

    # ---- export ------------------------------------------------------------------------
    def export(self, workdir: str, state: dict, step: int) -> None:
        """WORKDIR/export: the inference variables, the config, copies of earlier exports."""
        self.export_later(workdir, state, step)()

    def export_later(self, workdir: str, state: dict, step: int) -> Callable[[], None]:
        """Fetches the export's weights to the host now; the returned call writes the files
        (so that a background thread can, while the next steps run)."""
        variables = parallel.to_host(self.inference_variables(state))

        def write() -> None:
            exports.write(workdir, variables, self.config, step, self.export_layout)
            if jax.process_index() == 0:
                for source, name in self.frozen_exports():
                    exports.copy(source, f"{workdir}/{exports.EXPORT_DIR}/{name}")

        return write
