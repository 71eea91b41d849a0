"""The bench itself works: `python -m bench.run --quick --json OUT` measures every stage and writes the report.

Speeds are not checked here (they belong in BENCHMARKS.md); the shape and sanity of the report are.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("preprocess", "train", "sample", "evaluate", "sweep_overhead", "sweep_scaling")  # the issue's
EXTRA_ROWS = ("preprocess_cached", "preprocess_wav")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_bench_reports_every_stage(tmp_path: Path, esc50_mini: Path) -> None:
    pytest.importorskip("audiodiffusion", reason="the bench extra is not installed (pip install -e '.[bench]')")
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # sample_matched (tens of seconds even when quick: it trains, samples five ways and scores each) is left
    # out here for the suite's time budget; its decision rule is tested below, its figures are BENCHMARKS.md's.
    command = [sys.executable, "-m", "bench.run", "--quick", "--json", str(out), "--source", str(esc50_mini),
               "--work-dir", str(tmp_path / "work"), "--gpu", "off", "--stages", ",".join(STAGES)]  # fmt: skip
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=290)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    for stage in STAGES + EXTRA_ROWS:
        row = report[stage]
        assert set(row) >= {"ours", "baseline", "unit", "ratio"}, stage
        assert row["ours"] > 0 and row["baseline"] > 0, (stage, row)
        assert math.isclose(row["ratio"], row["ours"] / row["baseline"], rel_tol=1e-9), stage
        assert row["unit"].endswith("/s"), stage
        assert row["verdict"] in ("pass", "miss"), stage
        assert stage in completed.stdout  # the printed table has a row per stage
    # The evaluate stage compares distances, not only speeds: ours equals the package's own math.
    assert report["evaluate"]["details"]["fad_equal"], report["evaluate"]["details"]
    assert report["train"]["details"]["peak_memory_mib_ours"] > 0


def test_sample_matched_takes_the_fewest_steps_whose_interval_overlaps_the_baselines():
    from bench.sample_matched import fewest_matching_steps

    def row(low: float, high: float) -> dict:
        return {"fd_esc_ci_low": low, "fd_esc_ci_high": high}

    results = {("ddim", 50): row(10, 12), ("dpmpp_2m", 10): row(14, 16), ("dpmpp_2m", 20): row(11.5, 13),
               ("dpmpp_2m", 15): row(12.5, 14), ("dpmpp_2m", 25): row(9, 10.5)}  # fmt: skip
    assert fewest_matching_steps(results) == 20  # 15 steps' interval starts above DDIM-50's
    results[("dpmpp_2m", 20)] = row(13, 14)
    assert fewest_matching_steps(results) == 25
    results[("dpmpp_2m", 25)] = row(1, 2)
    assert fewest_matching_steps(results) is None


def test_bad_stage_and_source_fail_in_one_line(tmp_path: Path, esc50_mini: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for arguments, culprit in (
        (["--stages", "preprocess,warp"], "warp"),
        (["--source", str(tmp_path / "missing")], "missing"),
    ):
        completed = subprocess.run(
            [sys.executable, "-m", "bench.run", "--quick", *arguments], cwd=REPO, env=env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert completed.returncode == 2, completed.stderr
        assert completed.stderr.count("\n") == 1 and culprit in completed.stderr, completed.stderr


@pytest.mark.timeout(300)
def test_gpu_study_code_runs_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/gpu.py's measurement (modes, FLOP count, MFU, table) on the CPU: only CUDA's own calls are left out.

    The GPU figures themselves need a GPU; this catches everything else before one is lent.
    """
    from bench.gpu import PEAK_ENV, format_gpu_table, measure, peak_tflops

    monkeypatch.delenv(PEAK_ENV, raising=False)
    rows = [measure(mode, batch=2, steps=1, device="cpu") for mode in ("fp32", "bf16+channels_last")]
    for row in rows:
        assert 15 < row["parameters_m"] < 30, row  # the ~20M-parameter experiment UNet the issue names
        for step in ("train", "sample"):
            assert row[step]["samples_per_s"] > 0 and row[step]["tflops_per_s"] > 0, row
            assert row[step]["mfu"] is None and row[step]["peak_memory_mib"] is None, row  # no GPU, no peak
        # A training step (forward + backward) costs more FLOPs than a forward pass: about 3x.
        assert 2 < row["train"]["tflops_per_s"] / row["train"]["samples_per_s"] / (
            row["sample"]["tflops_per_s"] / row["sample"]["samples_per_s"]) < 4, row  # fmt: skip
    table = format_gpu_table({"gpu": "cpu", "modes": [*rows, {"mode": "bf16+compile", "error": "no compiler"}]})
    assert "fp32" in table and "bf16+channels_last" in table and "failed: no compiler" in table
    assert peak_tflops("NVIDIA H200") == (67.0, 989.0) and peak_tflops("some other card") is None
