"""The train state (params, batch_stats, opt_state, step, rng and an optional EMA) and its creation.

The state is a pytree whose array leaves are all a checkpoint needs; the model's apply function and the optax
transformation are static fields.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from resnet_jax.parallel import replicated


class TrainState(struct.PyTreeNode):
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # uint32 key data; each step draws fold_in(rng, step)
    ema: Any  # {"params", "batch_stats"} averaged over steps, or None when EMA is off
    apply_fn: Callable[..., Any] = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}

    @property
    def eval_variables(self) -> dict[str, Any]:
        """The weights to evaluate: the EMA when there is one."""
        return self.ema if self.ema is not None else self.variables

    def checkpoint_tree(self) -> dict[str, Any]:
        """The arrays a checkpoint holds (None-free, so that orbax stores every leaf)."""
        tree = {"step": self.step, "params": self.params, "batch_stats": self.batch_stats}
        tree |= {"opt_state": self.opt_state, "rng": self.rng}
        return tree | ({"ema": self.ema} if self.ema is not None else {})

    def replace_from_checkpoint(self, tree: dict[str, Any]) -> TrainState:
        return self.replace(
            **{key: tree[key] for key in ("step", "params", "batch_stats", "opt_state", "rng")}
        ).replace(ema=tree.get("ema", self.ema))


# LLVM's -O3 makes the init program (threefry's unrolled rounds, one per weight) take 3.5-4 s to compile on a CPU;
# -O2 compiles it in 1.1-1.4 s, runs it as fast, and draws bit-identical weights (resnet20/18/50, wrn28_10).
CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 2}


def lower_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seed: int,
    input_shape: Sequence[int],
    mesh: Mesh,
    use_ema: bool = False,
    compiler_options: dict[str, Any] | None = None,
) -> jax.stages.Lowered:
    """The program that initialises the model and optimizer on every device of `mesh`, replicated, lowered.

    Its `out_info` is the state's shapes and shardings, known before anything compiles; `.compile()()` is the state.
    `compiler_options` default to `CPU_INIT_COMPILER_OPTIONS` on the CPU; `{}` compiles with XLA's defaults.
    """

    def init() -> TrainState:
        # The keys are made inside, so that the program closes over no array (it may be lowered under a trace).
        init_key, step_key = jax.random.split(jax.random.key(seed))
        variables = model.init(init_key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
        params, batch_stats = variables["params"], variables["batch_stats"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            rng=jax.random.key_data(step_key),
            ema={"params": params, "batch_stats": batch_stats} if use_ema else None,
            apply_fn=model.apply,
            tx=tx,
        )

    if compiler_options is None and mesh.devices.flat[0].platform == "cpu":
        compiler_options = CPU_INIT_COMPILER_OPTIONS
    return jax.jit(init, out_shardings=replicated(mesh), compiler_options=compiler_options or None).lower()
