"""Smoke tests of benchmarks/: each script runs at its smallest size and writes the JSON keys
its README promises. No timing is asserted here: timings are only meaningful as ratios
measured within one benchmark run (see benchmarks/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
TINY_TIMING = ["--device", "cpu", "--warmup", "0", "--repeats", "1", "--threads", "1"]


def run(tmp_path: Path, script: str, *args: str) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path / f"{script}.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == script
    return result, proc


def assert_printed_json_and_table(proc: subprocess.CompletedProcess, script: str) -> None:
    assert f"### {script}" in proc.stdout and "|---|" in proc.stdout
    assert proc.stdout.lstrip().startswith("{")


def assert_machine(result: dict) -> None:
    assert {"cpu", "cpus", "torch", "device", "commit", "date"} <= result["machine"].keys()


@pytest.mark.slow
def test_bench_frontends(tmp_path):
    result, proc = run(
        tmp_path,
        "bench_frontends",
        *TINY_TIMING,
        "--variants",
        "mel,msm+sfm",
        "--batch",
        "1",
        "--frames",
        "2",
        "--size",
        "16",
    )
    assert_printed_json_and_table(proc, "bench_frontends")
    assert_machine(result)
    assert result["status"] == "ok" and result["memory_kind"] == "saved_activations"
    assert set(result["variants"]) == {"mel", "msm+sfm"}
    for entry in result["variants"].values():
        assert {
            "step_s",
            "step_ratio_to_mel",
            "memory_bytes",
            "memory_ratio_to_mel",
            "params",
        } <= entry.keys()
        assert entry["memory_bytes"] > 0
    assert result["variants"]["mel"]["step_ratio_to_mel"] == 1.0
    assert "msm_sfm_step_ratio_to_mel" in result


@pytest.mark.slow
def test_bench_trainer(tmp_path):
    result, proc = run(
        tmp_path,
        "bench_trainer",
        *TINY_TIMING,
        "--frontend",
        "mel",
        "--batch",
        "1",
        "--frames",
        "2",
        "--size",
        "16",
    )
    assert_printed_json_and_table(proc, "bench_trainer")
    assert_machine(result)
    assert {"harness_step_s", "bare_step_s", "ratio", "spread", "times_s"} <= result.keys()
    assert result["ratio"] > 0


@pytest.mark.slow
def test_bench_data(tmp_path):
    result, proc = run(
        tmp_path,
        "bench_data",
        *TINY_TIMING,
        "--frontend",
        "mel",
        "--batch",
        "1",
        "--frames",
        "2",
        "--size",
        "16",
        "--batches",
        "1",
        "--clips",
        "2",
        "--seconds",
        "1.0",
        "--data-root",
        str(tmp_path / "data"),
    )
    assert_printed_json_and_table(proc, "bench_data")
    assert_machine(result)
    assert {"batches_per_s", "clips_per_s"} <= result["loader"].keys()
    assert "steps_per_s" in result["trainer"] and result["loader_over_consumption"] > 0
    decode = result["decode"]
    assert decode["files"] == 2
    assert (
        decode["decord"]["frames"] == decode["pyav"]["frames"] > 0
    )  # the same frames from both decoders
    assert "decord_over_pyav" in decode


@pytest.mark.slow
def test_bench_generate_skips_a_missing_backbone(tmp_path):
    result, proc = run(
        tmp_path,
        "bench_generate",
        *TINY_TIMING,
        "--backbones",
        "unet3d,no_such_backbone",
        "--frontend",
        "mel",
        "--size",
        "16",
        "--frames",
        "2",
        "--steps",
        "2",
    )
    assert_printed_json_and_table(proc, "bench_generate")
    assert_machine(result)
    unet = result["backbones"]["unet3d"]
    assert unet["status"] == "ok"
    assert {"clip_s", "compute_s_per_video_s", "video_s", "params"} <= unet.keys()
    assert unet["video_s"] == pytest.approx(2 / 25)
    missing = result["backbones"]["no_such_backbone"]
    assert missing["status"] == "skipped" and "not registered" in missing["reason"]


@pytest.mark.parametrize("script", ["bench_frontends", "bench_trainer"])
def test_unregistered_backbone_is_reported_as_skipped(tmp_path, script):
    result, proc = run(tmp_path, script, *TINY_TIMING, "--backbone", "no_such_backbone")
    assert result["status"] == "skipped" and "not registered" in result["reason"]
    assert f"{script}: skipped: backbone 'no_such_backbone' is not registered" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_bench_mfu_without_cuda_exits_cleanly(tmp_path):
    out = tmp_path / "mfu.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_mfu.py"), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CUDA is not available" in proc.stderr and "needs a GPU" in proc.stderr
    assert json.loads(out.read_text())["status"] == "skipped"


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["dit", "unet3d"])
def test_bench_mfu_cpu_dry_run_counts_flops(tmp_path, backbone):
    result, proc = run(
        tmp_path,
        "bench_mfu",
        *TINY_TIMING,
        "--backbone",
        backbone,
        "--peak-tflops",
        "1",
        "--batch",
        "1",
        "--frames",
        "2",
        "--latent",
        "8",
    )
    assert_printed_json_and_table(proc, "bench_mfu")
    assert {"flops_per_step", "step_s", "achieved_tflops", "peak_tflops", "mfu"} <= result.keys()
    assert result["flops_per_step"] > 0 and result["dry_run"] is True
    assert result["mfu"] == pytest.approx(result["flops_per_step"] / result["step_s"] / 1e12)


def test_bench_mfu_peak_table():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_mfu
    finally:
        sys.path.remove(str(BENCH))
    assert bench_mfu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench_mfu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench_mfu.peak_tflops("NVIDIA H200") == 989.0
    assert bench_mfu.peak_tflops("Some Future GPU") is None
