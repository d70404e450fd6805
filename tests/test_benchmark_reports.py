"""What the training benchmarks report (`benchmarks/fixed_runs.py`, `time_to_accuracy`, `suite_summary`): every run
is a fixed-length recipe run to its end, reported by its wall time and final accuracy with its count of seeds;
seconds to a target are only read off a finished run's test curve. Also the oneDNN builds' side-by-side table
(`onednn_builds`). No benchmark run here: records are made up."""

from __future__ import annotations

import pytest

from benchmarks import fixed_runs, onednn_builds, suite_summary, time_to_accuracy


def _evaluation(epoch: int, seconds: float, test: float, validation: float | None = None) -> dict:
    record = {"epoch": epoch, "step": 10 * epoch, "seconds": seconds, "test_accuracy": test, "test_loss": 0.3}
    return record | ({"validation_accuracy": validation} if validation is not None else {})


def _train(step: int, seconds: float) -> dict:
    return {"step": step, "seconds": seconds, "images_per_second": 1000.0}


def test_spread_gives_mean_sd_range_and_the_count_of_seeds():
    assert fixed_runs.spread([0.9, 0.92, None]) == "0.9100 ± 0.0141 (0.9000-0.9200), 2 seeds"
    assert fixed_runs.spread([0.9074]) == "0.9074, one seed"
    assert fixed_runs.spread([None]) == "none"
    assert fixed_runs.spread([85.2, 95.0], 0) == "90 ± 7 (85-95), 2 seeds"


def test_the_final_figure_is_the_last_evaluation_not_the_best():
    records = [_evaluation(1, 10, 0.93, 0.94), _train(20, 15), _evaluation(2, 20, 0.91, 0.92)]
    assert fixed_runs.final(records, "test_accuracy") == 0.91
    assert fixed_runs.final(records, "validation_accuracy") == 0.92
    assert fixed_runs.curve_seconds_to(records, 0.92) == 10
    assert fixed_runs.curve_seconds_to(records, 0.95) is None


def test_summary_table_and_seed_lines():
    results = {
        "ours seed 0": {"records": [_evaluation(1, 30, 0.85), _evaluation(2, 60, 0.905)], "wall_seconds": 62.0},
        "ours seed 1": {"records": [_evaluation(1, 31, 0.86), _evaluation(2, 61, 0.899)], "wall_seconds": 64.0},
        "seed_torch": {"records": [_evaluation(1, 100, 0.90)], "wall_seconds": 100.0},
    }
    headers, rows = fixed_runs.summary_table(results, (0.90,))
    assert "final validation accuracy" not in headers
    assert not any("best" in header for header in headers)
    assert rows[0] == ["ours seed 0", "2", "0.9050", "62", "60"]
    assert rows[1][-1] == "not reached"
    lines = fixed_runs.group_lines(results)
    assert lines[0].startswith("ours: final test accuracy 0.9020 ± 0.0042 (0.8990-0.9050), 2 seeds")
    assert lines[0].endswith("; wall time 63 ± 1 s (62-64 s), 2 seeds")
    assert lines[1] == "seed_torch: final test accuracy 0.9000, one seed; wall time 100 s, one seed"
    ours = fixed_runs.seed_groups(results)["ours"]
    assert fixed_runs.curve_ratio(ours, results["seed_torch"], 0.90) is None  # seed 1 never got there
    assert fixed_runs.curve_ratio(ours[:1], results["seed_torch"], 0.90) == pytest.approx(0.6)

    results["ours seed 0"]["records"][-1]["validation_accuracy"] = 0.91
    headers, rows = fixed_runs.summary_table(results, ())
    assert headers[3] == "final validation accuracy" and rows[0][3] == "0.9100" and rows[1][3] == "none"


def test_time_to_accuracy_reports_the_finished_run_and_reads_the_target_off_its_curve():
    records = [_train(10, 5), _evaluation(1, 6, 0.951, 0.95), _train(20, 10), _evaluation(2, 11, 0.948, 0.953)]
    summary = time_to_accuracy.summarize(records, total_steps=20, target=0.95)
    assert summary["finished"] and summary["steps_done"] == 20
    assert summary["final_test_accuracy"] == 0.948 and summary["final_validation_accuracy"] == 0.953
    assert summary["curve_seconds_to_target"] == 6
    assert not any("best" in key for key in summary)
    line = time_to_accuracy.report_line(summary, total=12.0, time_limit=0)
    assert "the fixed recipe to its end (20 of 20 steps) in 12.0 s: final test accuracy 0.9480" in line
    assert "(one seed)" in line and "read off its test curve afterwards (stopped nothing)" in line

    without_target = time_to_accuracy.summarize(records, total_steps=20)
    assert without_target["curve_seconds_to_target"] is None
    assert "read off" not in time_to_accuracy.report_line(without_target, total=12.0, time_limit=0)


def test_a_run_cut_by_the_time_limit_is_not_the_recipes_figure():
    records = [_train(10, 5), _evaluation(1, 6, 0.96), _train(20, 10)]
    summary = time_to_accuracy.summarize(records, total_steps=40, target=0.95)
    assert not summary["finished"] and summary["curve_seconds_to_target"] is None
    assert summary["projected_total_seconds"] == pytest.approx(20)
    line = time_to_accuracy.report_line(summary, total=11.0, time_limit=11)
    assert line.startswith("NOT finished: stopped by the 11 s time limit (a budget) after 20 of 40 steps")
    assert "not the recipe's figure" in line and "read off" not in line


def test_suite_summary_judges_the_fixed_recipes_wall_time_and_reports_its_accuracy():
    run = {
        "config": {"train": {"num_epochs": 32}},
        "steps_done": 3744,
        "total_steps": 3744,
        "total_seconds": 28.4,
        "final_test_accuracy": 0.9512,
        "final_validation_accuracy": None,
        "target": None,
        "evaluations": [],
    }
    label, measured, goal, met = suite_summary._fashion_row(run, 30)
    assert label == "Fashion-MNIST, the fixed 32-epoch recipe to its end, compile included"
    assert measured == "28.4 s; final test accuracy 0.9512 (one seed)" and goal == "<= 30 s" and met == "yes"
    cut = run | {"steps_done": 117, "total_seconds": 55.0, "projected_total_seconds": 70.0}
    assert suite_summary._fashion_row(cut, 30)[1].startswith("not finished in 55 s (117 of 3744 steps")
    cut["evaluations"] = [_evaluation(1, 34.4, 0.196)]
    assert suite_summary._fashion_row(cut, 30)[1] == (
        "not finished in 55 s (117 of 3744 steps, the last evaluation's test accuracy 0.1960, not the recipe's "
        "figure; all steps projected at 70 s)"
    )
    assert suite_summary._fashion_row(None, 30)[1] == "not measured"


def test_onednn_builds_sets_each_build_against_the_first_round_by_round():
    def process(seconds: float, x_xla: float) -> dict:
        return {"seconds_per_step": seconds, "x_xla": x_xla, "onednn": "v", "dtypes": ["float32"]}

    rounds = [
        {"sycl": process(0.5, 0.5), "tbb": process(0.4, 0.45)},
        {"sycl": process(1.0, 0.5), "tbb": process(1.2, 0.55)},
    ]
    text = onednn_builds.summary(rounds, ["sycl", "tbb"], reference=True)
    assert "| 1 | 500 | 400 | 0.800 | 0.500 | 0.450 | 0.900 |" in text
    assert "| 2 | 1000 | 1200 | 1.200 | 0.500 | 0.550 | 1.100 |" in text
    assert "tbb's step time / sycl's: median 1.000, range 0.800-1.200 over 2 rounds" in text
    assert "tbb's (oneDNN step / XLA step) over sycl's: median 1.000, range 0.900-1.100" in text
    assert onednn_builds.parse_build("tbb=/v/bin/python:/src")[:2] == ("tbb", "/v/bin/python")
