"""One of two processes (gloo, 2 CPU devices each) that open the grain loader's streams of a folder the parent test
wrote: `python -m tests.stream_shard_probe FOLDER ADDRESS PROCESS_ID`. Prints one JSON object: the files (by colour)
this process read in one training epoch and in one evaluation, and the global batch its training step saw.
"""

import json
import sys

import jax
import numpy as np

from resnet_jax import parallel
from resnet_jax.experiment import build
from tests.test_stream import grain_config, identify


def main() -> None:
    root, address, process_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    parallel.initialize_distributed({"coordinator_address": address, "num_processes": 2, "process_id": process_id})
    built = build(grain_config(root, **{"data.mean": (0.5,) * 3, "data.std": (0.25,) * 3}))
    train, test = built.open_train_stream(), built.open_eval_stream("test")
    try:
        images, labels = train.take(built.steps_per_epoch)
        batches = list(test.batches())
    finally:
        train.close()
        test.close()
    # The first step's global batch, as the loop feeds it: each process's rows on its own devices.
    fed = parallel.global_batches(images[:1], built.mesh)
    local = [np.asarray(shard.data) for shard in fed.addressable_shards]
    mask = np.concatenate([b["mask"] for b in batches])
    print(
        json.dumps(
            {
                "steps_per_epoch": built.steps_per_epoch,
                "train_shape": list(images.shape),
                "global_batch_shape": list(fed.shape),
                "local_rows_placed": identify(np.concatenate(local, axis=1)).ravel().tolist(),
                "local_rows_read": identify(images[:1]).ravel().tolist(),
                "train_files": identify(images).ravel().tolist(),
                "train_labels": labels.ravel().tolist(),
                "test_files": identify(np.concatenate([b["image"] for b in batches]))[mask].tolist(),
                "test_padding": int((~mask).sum()),
                "devices": jax.device_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
