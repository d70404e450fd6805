"""Train-step throughput and compile time of the runs' own train program, over model x batch x dtype x steps per
call, on synthetic data resident on the device; each figure is set against the device's compute and memory floors.

    python -m benchmarks.throughput --models resnet20,resnet18 --batches 128,512 --dtypes float32,bfloat16
    python -m benchmarks.throughput --dataset fashion_mnist --configs resnet20:128:float32:1:32,resnet8:128:float32:1:0
    python -m benchmarks.throughput --models resnet20,plain20 --batches 128 --dtypes float32 --gradient-flow-cost
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import statistics
import time
from collections.abc import Sequence

import jax

from benchmarks import common

HEADERS = (
    "model",
    "batch",
    "dtype",
    "image",
    "steps/call",
    "images/s",
    "ms/step",
    "spread",
    "first call s",
    "GFLOP/step",
    "TFLOP/s",
    "compute floor ms",
    "memory floor ms",
    "x floor",
)

FLOW_TIMES = ("seconds_per_step", "seconds_per_step_without_gradient_flow")


def measure(
    args: argparse.Namespace, model: str, batch: int, dtype: str, steps_per_call: int, image_size: int, ceilings
) -> dict:
    loop = functools.partial(
        common.JaxTrainLoop,
        model,
        batch,
        dtype,
        steps_per_call,
        args.examples,
        scan=common.parse_scan(args.scan),
        dataset=args.dataset,
        image_size=image_size,
    )
    bench = loop()
    first_call = bench.first_call_seconds()
    runners = {"jax": bench}
    if args.gradient_flow_cost:
        runners["without gradient flow"] = loop(gradient_flow=False)
    timings = common.interleaved_timings(runners, args.windows, args.min_window_seconds)
    timing = timings["jax"]
    cost = bench.step_cost(args.xla_bytes) if args.costs else {"flops": float("nan"), "bytes": float("nan")}
    result = {
        "model": model,
        "batch": batch,
        "dtype": dtype,
        "input_shape": bench.experiment.input_shape,
        "steps_per_call": steps_per_call,
        "images_per_second": batch / timing.seconds_per_step,
        "seconds_per_step": timing.seconds_per_step,
        "window_seconds_per_step": timing.window_seconds,
        "steps_per_window": timing.steps_per_window,
        "spread": timing.spread,
        "first_call_seconds": first_call,
        "mean_train_loss": bench.mean_loss(),
        **cost,
        **common.floors(cost, dtype, ceilings),
    }
    if args.gradient_flow_cost:
        result |= _flow_cost(args, timing, timings["without gradient flow"], cost, runners["without gradient flow"])
    del bench, runners
    gc.collect()
    return result


def _flow_cost(args, timing: common.Timing, without: common.Timing, cost: dict, loop: common.JaxTrainLoop) -> dict:
    """The step with its gradient-flow metrics against the step without: the medians' ratio, the median of each
    round's ratio (its two windows ran back to back, under the same load), and XLA's counts of both programs."""
    rounds = [on / off for on, off in zip(timing.window_seconds, without.window_seconds, strict=True)]
    figures = {
        "seconds_per_step_without_gradient_flow": without.seconds_per_step,
        "window_seconds_per_step_without_gradient_flow": without.window_seconds,
        "gradient_flow_ratio": timing.seconds_per_step / without.seconds_per_step,
        "gradient_flow_paired_ratio": statistics.median(rounds),
        "gradient_flow_flops_ratio": float("nan"),
        "gradient_flow_xla_bytes_ratio": float("nan"),
    }
    if args.costs:
        cost_without = loop.step_cost(args.xla_bytes)
        figures["gradient_flow_flops_ratio"] = cost["flops"] / cost_without["flops"]
        if args.xla_bytes:
            figures["gradient_flow_xla_bytes_ratio"] = cost["xla_bytes_estimate"] / cost_without["xla_bytes_estimate"]
    return figures


def flow_row(result: dict) -> list:
    ratios = ("gradient_flow_ratio", "gradient_flow_paired_ratio", "gradient_flow_flops_ratio")
    return [
        *row(result)[:5],
        *(result[key] * 1e3 for key in FLOW_TIMES),
        *(f"{result[key]:.3f}" for key in (*ratios, "gradient_flow_xla_bytes_ratio")),
    ]


def row(result: dict) -> list:
    step = result["seconds_per_step"]
    floor = max(result.get("compute_floor_s", float("nan")), result.get("memory_floor_s", float("nan")))
    return [
        result["model"],
        result["batch"],
        result["dtype"],
        "x".join(map(str, result["input_shape"])),
        result["steps_per_call"],
        result["images_per_second"],
        step * 1e3,
        f"{result['spread']:.0%}",
        result["first_call_seconds"],
        result["flops"] / 1e9,
        result["flops"] / step / 1e12,
        floor * 1e3,
        result.get("memory_floor_s", float("nan")) * 1e3,
        step / floor if floor == floor and floor > 0 else float("nan"),
    ]


def _figure(value: float) -> str:
    """Three significant figures below 1,000 (a loaded 2-core CPU multiplies matrices at a few hundredths of a
    TFLOP/s, which one decimal shows as 0.0), whole numbers above."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def main(argv: Sequence[str] | None = None) -> None:
    common.use_the_tools_allocator()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(common.MODELS))
    parser.add_argument("--batches", default="128,512,1024")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--steps-per-call", default="", help="comma list; default 50 on accelerators, 1 on the CPU")
    parser.add_argument(
        "--configs",
        default="",
        help="MODEL:BATCH:DTYPE:STEPS_PER_CALL[:IMAGE_SIZE],... in this order, instead of the grid",
    )
    parser.add_argument("--dataset", default="cifar10", help="synthetic images in this dataset's shape")
    parser.add_argument("--image-sizes", default="32", help="comma list; 0 keeps the dataset's native size")
    parser.add_argument(
        "--scan", default="auto", choices=("auto", "on", "off"), help="Experiment.lower_train_program(scan=)"
    )
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--min-window-seconds", type=float, default=0.0, help="default 1 (accelerator), 3 (CPU)")
    parser.add_argument("--examples", type=int, default=50_000, help="synthetic training examples on the device")
    parser.add_argument("--budget-seconds", type=float, default=0.0, help="skip the configurations left after this")
    parser.add_argument("--no-costs", dest="costs", action="store_false", help="skip XLA cost analysis and floors")
    parser.add_argument(
        "--xla-bytes", action="store_true", help="also XLA's estimate of the fused step's bytes (one more compile)"
    )
    parser.add_argument(
        "--gradient-flow-cost",
        action="store_true",
        help="also time each configuration with train.gradient_flow=False, window by window in turn with it on, "
        "and print the ratio of the two medians",
    )
    parser.add_argument("--json", default="", help="write every figure here")
    args = parser.parse_args(argv)
    accelerator = common.on_accelerator()
    args.min_window_seconds = args.min_window_seconds or (1.0 if accelerator else 3.0)
    steps_per_call = common.parse_list(args.steps_per_call or ("50" if accelerator else "1"), int)

    start = time.perf_counter()
    env = common.environment()
    ceilings = common.measure_ceilings() if args.costs else None
    if args.configs:
        default_size = common.parse_list(args.image_sizes, int)[0]
        configs = []
        for item in common.parse_list(args.configs):
            model, batch, dtype, per_call, *size = item.split(":")
            configs.append((model, int(batch), dtype, int(per_call), int(size[0]) if size else default_size))
    else:
        configs = list(
            itertools.product(
                common.parse_list(args.models),
                common.parse_list(args.batches, int),
                common.parse_list(args.dtypes),
                steps_per_call,
                common.parse_list(args.image_sizes, int),
            )
        )
    results, skipped = [], []
    for config in configs:
        if args.budget_seconds and time.perf_counter() - start > args.budget_seconds:
            skipped.append(config)
            continue
        try:
            results.append(measure(args, *config, ceilings))
        except Exception as error:  # one configuration's failure (e.g. out of memory) is reported
            print(f"{config}: {type(error).__name__}: {str(error).splitlines()[0][:300]}", flush=True)
            skipped.append(config)
        else:
            print(common.markdown_table(HEADERS, [row(results[-1])]).splitlines()[-1], flush=True)
        # Written after every configuration, so that a run stopped at its time limit keeps what it measured.
        common.write_json(args.json, {"environment": env, "ceilings": ceilings, "results": results, "skipped": skipped})
        jax.clear_caches()

    print(f"\n### Train-step throughput (benchmarks/throughput.py)\n\n{common.environment_line(env)}\n")
    if ceilings:
        print(
            f"Measured ceilings: bf16 matmul {_figure(ceilings['bfloat16_flops_per_second'] / 1e12)} TFLOP/s, "
            f"f32 matmul {_figure(ceilings['float32_flops_per_second'] / 1e12)} TFLOP/s, "
            f"copy {_figure(ceilings['bytes_per_second'] / 1e9)} GB/s.\n"
        )
    print(common.markdown_table(HEADERS, [row(result) for result in results]))
    print(
        "\nFloors: compute = XLA's FLOPs / measured matmul rate of the dtype; memory = every convolution's input,"
        " kernel and output moved once (all else fused) / measured copy bandwidth; x floor = ms/step / the larger."
    )
    if args.gradient_flow_cost:
        headers = (*HEADERS[:5], "ms/step", "ms/step without", "ratio", "paired ratio", "FLOP ratio", "XLA bytes ratio")
        print("\nThe gradient-flow metrics' cost: the step with them against the step without (train.gradient_flow)")
        print("timed in turn, window by window, in this process; the paired ratio is the median of each round's.\n")
        print(common.markdown_table(headers, [flow_row(result) for result in results]))
    if skipped:
        print(f"\nnot measured (budget or error): {skipped}")


if __name__ == "__main__":
    main()
