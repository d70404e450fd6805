"""The oneDNN convolution under a batch-sharded jit; run in a subprocess with forced host devices (see
test_onednn.py). Prints one JSON object of measurements for the parent test to assert on."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import onednn, parallel


def loss(conv, x, w, bias):
    return jnp.sum(jnp.tanh(conv(x, w, bias)))


def onednn_conv(x, w, bias):
    return onednn.conv2d(x, w, (2, 2), ((1, 1), (1, 1)), bias)


def xla_conv(x, w, bias):
    y = jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


def main() -> None:
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((16, 8, 8, 4), np.float32), parallel.batch_sharded(mesh))
    w = jax.device_put(rng.standard_normal((3, 3, 4, 8), np.float32) * 0.2, parallel.replicated(mesh))
    bias = jax.device_put(rng.standard_normal((8,), np.float32), parallel.replicated(mesh))
    results = {}
    for name, conv in (("onednn", onednn_conv), ("xla", xla_conv)):
        step = jax.jit(jax.value_and_grad(lambda x, w, b, conv=conv: loss(conv, x, w, b), argnums=(0, 1, 2)))
        hlo = step.lower(x, w, bias).compile().as_text()
        value, grads = step(x, w, bias)
        results[name] = {"value": float(value), "grads": [np.asarray(g).tolist() for g in grads]}
        results[name]["all_gathers"] = hlo.count("all-gather(")
        # The batch of each oneDNN call's first operand: a shard's, not the global batch.
        results[name]["custom_call_batches"] = [
            int(batch)
            for batch in re.findall(
                r'target="resnet_jax_onednn_conv_\w+", operand_layout_constraints=\{f32\[(\d+),', hlo
            )
        ]
        results[name]["dx_batch_axes"] = grads[0].sharding.spec[0]
    results["devices"] = jax.device_count()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
