"""Hostile inputs: every command ends in one clear line or a clean success, within bounded
memory and time, never overwrites an input, and no config path runs code.

Grouped as in docs/reliability.md: the error convention, sweep files, training configs,
generate, prepare, the sweep folder, and the local SLURM cluster.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import mlflow
import numpy as np
import pytest

from singer import cli
from singer.config import ConfigError, compose, flatten, loggable_container
from singer.data.media import MediaError, read_image, write_mp4
from singer.sweeps.spec import SweepSpecError, load_sweep
from test_media import indexed_frames, tone, write_av
from tiny import FAST

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def run(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, **kwargs
    )


def assert_one_line_error(stderr: str, *texts: str) -> str:
    """The error convention: no traceback, and exactly one ``error: what — what to do`` line."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert " — " in lines[0], lines[0]
    for text in texts:
        assert text in lines[0], (text, lines[0])
    return lines[0]


# -- the error convention -------------------------------------------------------------------------
def test_entry_point_turns_user_errors_into_one_line_and_shows_bugs(capsys):
    @cli.entry_point
    def main(argv):
        if argv == ["user"]:
            raise cli.UserError("the file x is missing", "give another file")
        if argv == ["config"]:
            raise ConfigError("trainer.steps=-1 is not an integer >= 1")
        if argv == ["bug"]:
            raise ZeroDivisionError("a bug")
        import argparse

        argparse.ArgumentParser(prog="prog").parse_args(argv)
        return 0

    assert main(["user"]) == 2
    assert capsys.readouterr().err == "error: the file x is missing — give another file\n"
    assert main(["config"]) == 2
    assert_one_line_error(capsys.readouterr().err, "trainer.steps=-1", "python -m singer.registry")
    assert main(["--bogus"]) == 2  # argparse's own errors follow the convention too
    assert_one_line_error(capsys.readouterr().err, "unrecognized arguments: --bogus", "--help")
    assert main(["user", "--debug"]) == 2  # --debug shows the traceback, and is not an argument
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: the file x is missing — give another file\n")
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        main(["bug"])


@pytest.mark.parametrize(
    "module, argv, texts",
    [
        ("singer.registry", ["nokind"], ["unknown kind 'nokind'"]),
        ("singer.params", ["trainer.steps=abc"], ["trainer.steps='abc'"]),
        ("singer.sweep", ["/nowhere/sweep.yaml"], ["no such sweep file"]),
        ("singer.evaluate", ["/nowhere/run", "--no-mlflow"], ["no checkpoint"]),
        ("singer.data.prepare", ["--src", "/nowhere", "--out", "/tmp/x"], ["is not a folder"]),
        ("singer.data.synth", ["--out", "x", "--clips", "0", "--seed", "0"], ["--clips 0"]),
        ("singer.data.estimator", ["--data", "/nowhere"], ["/nowhere"]),
        ("singer.data.audio_stats", ["--data", "/nowhere", "--out", "x"], ["/nowhere"]),
        ("singer.generate", ["--checkpoint", "/nowhere"], ["required"]),
    ],
)
def test_every_command_line_reports_user_errors_in_one_line(module, argv, texts, capsys):
    import importlib

    main = importlib.import_module(module).main
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, *texts)


def test_a_command_exits_2_as_a_process():
    proc = run("-m", "singer.data.prepare", "--src", "/nowhere", "--out", "/tmp/x")
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "--src /nowhere is not a folder")


# -- sweep files ----------------------------------------------------------------------------------
def sweep_file(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


BASE_SWEEP = """\
name: t
overrides: [trainer=cpu_tiny]
objectives: [{metric: val/loss}]
launcher: debug
"""
LEVELS = "space: {frontend.levels: {type: int, low: 1, high: 2}}\n"


def test_yaml_aliases_are_refused_before_anything_expands(tmp_path):
    # A small "billion laughs": 9^5 strings once expanded (the real one is 9^9).
    levels = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 5):
        levels.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    path = sweep_file(
        tmp_path, "name: t\n" + "\n".join(levels) + "\nobjectives: [{metric: val/loss}]\n"
    )
    with pytest.raises(SweepSpecError, match="anchors and aliases"):
        load_sweep(path)
    # Even an anchor alone, and in the values of a choice.
    path = sweep_file(
        tmp_path,
        BASE_SWEEP + "space: {frontend.levels: {type: choice, values: &v [1, 2]}}\n",
    )
    with pytest.raises(SweepSpecError, match="anchors and aliases"):
        load_sweep(path)


def test_sweep_file_size_binary_and_nesting_are_bounded(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(BASE_SWEEP + "description: " + "x" * 300_000 + "\n")
    with pytest.raises(SweepSpecError, match="larger than 256 KiB"):
        load_sweep(big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SweepSpecError, match="not a text file"):
        load_sweep(binary)
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: t\ndescription: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(SweepSpecError):
        load_sweep(deep)


def test_huge_grids_are_refused_with_a_clear_message(tmp_path):
    path = sweep_file(
        tmp_path,
        BASE_SWEEP
        + "space:\n  trainer.steps: {type: int, low: 1, high: 200}\n"
        + "  trainer.batch_size: {type: int, low: 1, high: 200}\n",
    )
    with pytest.raises(SweepSpecError, match=r"the grid has 40000 configurations.*at most 10000"):
        load_sweep(path)
    many = sweep_file(
        tmp_path,
        BASE_SWEEP
        + f"space: {{trainer.steps: {{type: choice, values: {list(range(1, 1100))}}}}}\n",
    )
    with pytest.raises(SweepSpecError, match="at most 1000"):
        load_sweep(many)


def test_validation_composes_a_few_values_per_axis_not_each(tmp_path, monkeypatch):
    import singer.config

    calls = []
    real = singer.config.compose

    def counting(overrides=(), *args, **kwargs):
        calls.append(list(overrides))
        if len(calls) > 20:
            raise AssertionError("validation composes every value")
        return real(overrides, *args, **kwargs)

    monkeypatch.setattr(singer.config, "compose", counting)
    path = sweep_file(
        tmp_path,
        BASE_SWEEP + f"space: {{trainer.steps: {{type: choice, values: {list(range(1, 501))}}}}}\n",
    )
    spec = load_sweep(path)
    assert len(spec.grid_configurations()) == 500 and len(calls) <= 5


@pytest.mark.parametrize(
    "extra, key, text",
    [
        ("seeds: [1e23]\n" + LEVELS, "seeds[0]", "an integer"),
        ("seeds: [100000000000000000000000]\n" + LEVELS, "seeds[0]", "from 0 to 2147483647"),
        (
            "space: {trainer.steps: {type: choice, values: [abc, 4]}}\n",
            "space.trainer.steps",
            "'abc'",
        ),
        (
            "space: {trainer.steps: {type: choice, values: [4, 5, abc, 6]}}\n",
            "space.trainer.steps",
            "'abc'",
        ),
        ("space: {trainer.steps: {type: int, low: -5, high: 4}}\n", "space.trainer.steps", "-5"),
        (
            "space: {frontend.levels: {type: choice, values: [1, two, 3]}}\n",
            "space.frontend.levels",
            "'two'",
        ),
        ("variants: {x: [hydra.run.dir=/etc]}\n", "variants.x[0]", "Hydra's own section"),
        ("variants: {x: [hydra.job.chdir=true]}\n", "variants.x[0]", "Hydra's own section"),
        (
            "variants: {x: ['+hydra.callbacks.c._target_=builtins.open']}\n",
            "variants.x[0]",
            "Hydra",
        ),
        (
            "space: {hydra.job.chdir: {type: choice, values: [true]}}\n",
            "space.hydra.job.chdir",
            "Hydra",
        ),
        ("variants: {x: ['+model.leak=${oc.env:HOME}']}\n", "variants.x[0]", "calls a resolver"),
        (
            "space: {trainer.lr: {type: choice, values: ['${oc.env:HOME}']}}\n",
            "space.trainer.lr.values",
            "resolver",
        ),
    ],
)
def test_bad_values_fail_at_validation_not_at_run_time(tmp_path, extra, key, text):
    path = sweep_file(tmp_path, BASE_SWEEP + extra)
    with pytest.raises(SweepSpecError) as info:
        load_sweep(path)
    assert f"key '{key}'" in str(info.value) and text in str(info.value), str(info.value)


def test_plain_interpolation_stays_allowed_in_sweeps(tmp_path):
    path = sweep_file(
        tmp_path, BASE_SWEEP + "variants: {x: ['trainer.val_every=${trainer.log_every}']}\n"
    )
    assert load_sweep(path).variants == {"x": ("trainer.val_every=${trainer.log_every}",)}


# -- training configs -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, text",
    [
        ("trainer.steps=-5", "trainer.steps=-5"),
        ("trainer.steps=abc", "trainer.steps='abc'"),
        ("trainer.ckpt_every=0", "trainer.ckpt_every=0"),
        ("seed=1e23", "seed=1e+23"),
        ("trainer.batch_size=0", "trainer.batch_size=0"),
        ("data.synth.clips=0", "data.synth.clips=0"),
        ("trainer.lr=nan", "trainer.lr=nan"),
        ("device=gpu", "device='gpu'"),
    ],
)
def test_out_of_range_values_are_config_errors(override, text):
    with pytest.raises(ConfigError, match=text.replace("+", r"\+")):
        compose(["trainer=cpu_tiny", override])


@pytest.mark.parametrize(
    "argv, text",
    [
        (["+hydra.callbacks.x._target_=builtins.open"], "import target"),
        (["hydra.job.env_set.LD_PRELOAD=/tmp/x.so"], "Hydra's section"),
        (["hydra.job_logging.handlers.x.class=builtins.open"], "Hydra's section"),
        (["-m", "frontend=mel,msm", "+hydra.callbacks.x._target_=builtins.open"], "import target"),
        (["-m", "frontend=mel,msm", "trainer.steps=0"], "trainer.steps=0"),
        (["trainer.stepz=3"], "trainer.stepz"),
    ],
)
def test_training_command_line_is_checked_before_hydra_runs(argv, text):
    from singer.train import check_command_line

    with pytest.raises(ConfigError, match=text):
        check_command_line(argv)
    check_command_line(["-m", "trainer=cpu_tiny", "frontend=mel,msm"])  # a good one passes


def test_a_config_dir_cannot_bring_its_own_code(tmp_path):
    from singer.train import check_command_line

    handlers = tmp_path / "hydra" / "job_logging"
    handlers.mkdir(parents=True)
    (handlers / "evil.yaml").write_text(
        "version: 1\nhandlers:\n  x:\n    class: builtins.open\n    file: /tmp/pwned\n"
    )
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "evil.yaml").write_text(
        "# @package _global_\nhydra:\n  callbacks:\n    x:\n      _target_: builtins.exec\n"
    )
    with pytest.raises(ConfigError, match="logging"):
        check_command_line(["--config-dir", str(tmp_path), "hydra/job_logging=evil"])
    with pytest.raises(ConfigError, match=r"hydra\.callbacks\.x\._target_"):
        check_command_line(["--config-dir", str(tmp_path), "+extra=evil"])


def test_hydra_callback_target_never_runs(tmp_path):
    """The reported exploit: a callback _target_ on the training command line created a file."""
    victim = tmp_path / "created"
    proc = run(
        "-m",
        "singer.train",
        "trainer=cpu_tiny",
        f"out_dir={tmp_path / 'run'}",
        "+hydra.callbacks.x._target_=builtins.open",
        f"+hydra.callbacks.x._args_=[{victim},w]",
        timeout=300,
    )
    assert proc.returncode == 2 and not victim.exists()
    assert_one_line_error(proc.stderr, "import target")
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback_of_a_training_user_error():
    proc = run("-m", "singer.train", "trainer=cpu_tiny", "seed=1e23", "--debug", timeout=300)
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: seed=1e+23")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_one_line(tmp_path):
    proc = run(
        "-m", "singer.train", *FAST, "device=cuda", f"out_dir={tmp_path / 'run'}", timeout=300
    )
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "CUDA is not available", "device=cpu")


def test_environment_values_never_reach_mlflow(data_root, tmp_path, monkeypatch):
    from singer.trainer import train

    monkeypatch.setenv("SINGER_TEST_SECRET", "s3cr3t-value")
    cfg = compose(
        [
            *FAST,
            f"data.root={data_root}",
            "trainer.steps=1",
            "trainer.val_every=1",
            "tracking.experiment=t-env",
            "+model.leak=${oc.env:SINGER_TEST_SECRET}",
            "+model.leak2=${model.leak}",
        ]
    )
    assert cfg.model.leak == "s3cr3t-value"  # the run itself may use it ...
    assert flatten(loggable_container(cfg))["model.leak"] == "${oc.env:SINGER_TEST_SECRET}"
    result = train(cfg, tmp_path / "run", progress=False)
    run_ = mlflow.get_run(result.run_id)  # ... but MLflow never sees it
    assert "s3cr3t-value" not in json.dumps(run_.data.params)
    assert run_.data.params["model.leak"] == "${oc.env:SINGER_TEST_SECRET}"
    config = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/config.json")
    assert "s3cr3t-value" not in json.dumps(config)


def test_a_run_that_fails_before_its_loop_ends_failed(data_root, tmp_path, monkeypatch):
    import singer.data.batches
    from singer.trainer import train

    def broken(*args, **kwargs):
        raise RuntimeError("the data loader broke")

    monkeypatch.setattr(singer.data.batches, "BatchStream", broken)
    cfg = compose([*FAST, f"data.root={data_root}", "tracking.experiment=t-early"])
    with pytest.raises(RuntimeError, match="data loader broke"):
        train(cfg, tmp_path / "run", progress=False)
    (row,) = [r for _, r in mlflow.search_runs(experiment_names=["t-early"]).iterrows()]
    assert row["status"] == "FAILED" and "data loader broke" in row["tags.error"]


# -- generate -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """A one-step model: enough to generate from."""
    from singer.trainer import train

    out = tmp_path_factory.mktemp("gen") / "run"
    cfg = compose([*FAST, f"data.root={data_root}", "trainer.steps=1", "trainer.val_every=1"])
    train(cfg, out, progress=False)
    return out


def write_wav(path: Path, seconds: float) -> Path:
    import wave

    wave_ = (tone(330, seconds, 16000) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(wave_.tobytes())
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width × height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture
def inputs(tmp_path):
    from PIL import Image

    face = tmp_path / "face.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(face)
    return face, write_wav(tmp_path / "song.wav", 0.5)


def generate(*args: str, capsys) -> tuple[int, str]:
    """``python -m singer.generate ARGS`` in this process: (exit status, stderr)."""
    from singer.generate import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_generate_never_overwrites_its_inputs(tmp_path, inputs, capsys):
    face, song = inputs
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not loaded: the output checks come first")
    before = {p: p.read_bytes() for p in (face, song, checkpoint)}
    (tmp_path / "outdir").mkdir()
    link = tmp_path / "link.wav"
    link.symlink_to(song)
    cases = [
        (song, "would overwrite the input"),
        (face, "would overwrite the input"),
        (checkpoint, "would overwrite the input"),
        (link, "would overwrite the input"),
        (tmp_path / "outdir", "is an existing folder"),
    ]
    for out, text in cases:
        code, err = generate(
            "--checkpoint",
            str(checkpoint),
            "--image",
            str(face),
            "--audio",
            str(song),
            "--out",
            str(out),
            capsys=capsys,
        )
        assert code == 2, (out, err)
        assert_one_line_error(err, text)
    # The temporary name counts too: writing take.mp4 goes through take.mp4.part.
    take = tmp_path / "take.mp4.part"
    take.write_bytes(song.read_bytes())
    code, err = generate(
        "--checkpoint",
        str(checkpoint),
        "--image",
        str(face),
        "--audio",
        str(take),
        "--out",
        str(tmp_path / "take.mp4"),
        capsys=capsys,
    )
    assert code == 2 and take.read_bytes() == song.read_bytes()
    assert_one_line_error(err, "would overwrite the input")
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "song.wav.part").exists() and not list((tmp_path / "outdir").iterdir())


def test_generate_refuses_bad_settings_and_bad_checkpoints_in_one_line(tmp_path, inputs, capsys):
    face, song = inputs
    empty = tmp_path / "empty.pt"
    empty.touch()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(random.Random(0).randbytes(2048))
    common = ["--image", str(face), "--audio", str(song), "--out", str(tmp_path / "o.mp4")]
    # arbitrary bytes reach different corners of the weights-only unpickler (IndexError,
    # KeyError, UnpicklingError, ...): every one is the same one-line error
    for seed in range(1, 25):
        other = tmp_path / f"garbage{seed}.pt"
        other.write_bytes(random.Random(seed).randbytes(2048))
        code, err = generate("--checkpoint", str(other), *common, capsys=capsys)
        assert code == 2, err
        assert_one_line_error(err, "cannot load checkpoint")
    for args, text in [
        (["--checkpoint", str(empty)], "empty file"),
        (["--checkpoint", str(garbage)], "cannot load checkpoint"),
        (["--checkpoint", str(garbage), "--guidance", "nan"], "--guidance nan"),
        (["--checkpoint", str(garbage), "--steps", "0"], "--steps 0"),
    ]:
        code, err = generate(*args, *common, capsys=capsys)
        assert code == 2, err
        assert_one_line_error(err, text)


def test_a_decompression_bomb_image_is_refused_before_decoding(tmp_path):
    with pytest.raises(MediaError, match="image too large"):
        read_image(png_header_only(tmp_path / "bomb.png", 20000, 20000))  # PIL's own bomb limit
    with pytest.raises(MediaError, match="image too large: 9000×9000 px"):
        read_image(png_header_only(tmp_path / "big.png", 9000, 9000))  # below PIL's, above ours


def test_generate_reports_a_bomb_face_in_one_line(trained, tmp_path, inputs, capsys):
    _, song = inputs
    bomb = png_header_only(tmp_path / "bomb.png", 20000, 20000)
    code, err = generate(
        "--checkpoint",
        str(trained),
        "--image",
        str(bomb),
        "--audio",
        str(song),
        "--out",
        str(tmp_path / "o.mp4"),
        capsys=capsys,
    )
    assert code == 2
    assert_one_line_error(err, "cannot read face image", "image too large")


def test_generation_streams_and_a_crash_keeps_the_clips_so_far(trained, tmp_path):
    import decord

    from singer.inference import load_model, write_video

    loaded = load_model(trained, device="cpu")
    face = np.full((40, 40, 3), 100, np.uint8)
    audio = tone(330, 2.0, 16000)  # 50 frames: 7 clips of 8
    real_sample, calls = loaded.spec.sample, []

    def failing_sample(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("the machine went away")
        return real_sample(*args, **kwargs)

    object.__setattr__(
        loaded, "spec", type(loaded.spec)(**{**loaded.spec.__dict__, "sample": failing_sample})
    )
    out = tmp_path / "song.mp4"
    with pytest.raises(RuntimeError, match="went away"):
        write_video(loaded, face, audio, out, steps=1, progress=False)
    assert not out.exists()
    part = tmp_path / "song.mp4.part"
    assert len(decord.VideoReader(str(part))) == 3 * loaded.clip_frames  # three clips survived

    object.__setattr__(
        loaded, "spec", type(loaded.spec)(**{**loaded.spec.__dict__, "sample": real_sample})
    )
    assert write_video(loaded, face, audio, out, steps=1, progress=False) == 50
    assert len(decord.VideoReader(str(out))) == 50 and not part.exists()


MEMORY_SCRIPT = """
import resource, sys, numpy as np, torch
from omegaconf import OmegaConf
from singer.inference import LoadedModel, write_video
from singer.models.spec import ModelSpec

def sample(model, conditions, steps, guidance_scale, generator):
    return torch.rand(1, 3, conditions.num_frames, 128, 128, generator=generator) * 2 - 1

cfg = OmegaConf.create({"data": {"fps": 25, "sample_rate": 16000}, "trainer": {"size": 128, "num_frames": 8},
                        "model": {"motion_frames": 2, "sample": {"steps": 1, "guidance_scale": 1.0}}})
spec = ModelSpec(name="fake", build=lambda cfg: None, sample=sample)
loaded = LoadedModel(torch.nn.Identity(), spec, cfg, 0, torch.device("cpu"))
seconds = float(sys.argv[1])
audio = np.zeros(int(seconds * 16000), np.float32)
frames = write_video(loaded, np.zeros((64, 64, 3), np.uint8), audio, sys.argv[2], progress=False)
print(frames, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_generation_memory_is_flat_in_duration(tmp_path):
    """A 60 s song held every frame (float and uint8) before; now one clip at a time."""
    script = tmp_path / "gen.py"
    script.write_text(MEMORY_SCRIPT)
    peaks = {}
    for seconds in (4, 60):
        proc = run(str(script), str(seconds), str(tmp_path / f"{seconds}.mp4"), timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        frames, peak_kb = map(int, proc.stdout.split()[-2:])
        assert frames == seconds * 25
        peaks[seconds] = peak_kb / 1024
    # Holding 1500 frames of 128² would add ~70 MB as uint8 and ~300 MB as float.
    print("peak RSS (MB) by seconds of audio:", peaks)
    assert peaks[60] - peaks[4] < 60, peaks


# -- prepare --------------------------------------------------------------------------------------
SETTINGS = dict(
    size=16, fps=25, sample_rate=16000, clip_seconds=1.0, min_seconds=0.5, progress=False
)


def a_video(path: Path, seconds: float = 1.2, width: int = 32, fps: int = 25) -> Path:
    count = int(seconds * fps)
    return write_mp4(path, indexed_frames(count, 32, width), fps, tone(440, seconds, 16000), 16000)


def prepare_cli(*args: str) -> subprocess.CompletedProcess:
    return run("-m", "singer.data.prepare", "--no-detect", "--quiet", *args, timeout=300)


def test_prepare_settings_and_output_folder_errors_are_one_line(tmp_path):
    src = tmp_path / "src"
    a_video(src / "a.mp4")
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    cases = [
        (["--size", "0"], "--size 0"),
        (["--fps", "0"], "--fps 0"),
        (["--out", str(a_file)], "is a file"),
        (["--out", str(a_file / "cache")], "not a folder"),
        (["--out", "/proc/singer-cache"], "--out /proc/singer-cache"),
        (["--out", str(src)], "holds the source folder"),
        (["--out", str(tmp_path)], "holds the source folder"),
    ]
    for extra, text in cases:
        args = ["--src", str(src), "--out", str(tmp_path / "cache"), *extra]
        proc = prepare_cli(*args)
        assert proc.returncode == 2, (extra, proc.stderr[-2000:])
        assert_one_line_error(proc.stderr, text)
    assert a_file.read_text() == "x"


def test_special_files_are_skipped_unopened_and_images_are_not_videos(tmp_path):
    from PIL import Image

    src = tmp_path / "src"
    a_video(src / "a.mp4")
    os.mkfifo(src / "pipe")  # opening it to sniff its type would block forever
    os.mkfifo(src / "pipe.mp4")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "photo.png")
    (src / "photo.png").rename(src / "photo.mp4")
    proc = prepare_cli("--src", str(src), "--out", str(tmp_path / "cache"), "--size", "16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = {
        f["path"]: f for f in json.loads((tmp_path / "cache" / "report.json").read_text())["files"]
    }
    assert files["a.mp4"]["status"] == "ok"
    for name in ("pipe", "pipe.mp4"):
        assert files[name]["status"] == "skipped" and "named pipe" in files[name]["reason"]
    assert files["photo.mp4"]["reason"] == "not a video (a PNG image)"


def test_unreadable_folders_are_reported(tmp_path, monkeypatch):
    from singer.data import prepare

    src = tmp_path / "src"
    a_video(src / "a.mp4")
    a_video(src / "locked" / "b.mp4")
    real_scandir = os.scandir

    def scandir(path="."):  # what a folder without read permission does (tests may run as root)
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = prepare.prepare_folder(src, tmp_path / "cache", detect_faces=False, **SETTINGS)
    assert report["unreadable"] == [{"path": "locked", "reason": "Permission denied"}]
    assert report["counts"]["unreadable"] == 1 and report["counts"]["ok"] == 1


def test_video_decoding_budget_holds_whatever_the_container(tmp_path, monkeypatch):
    """Matroska reports 0 frames; the budget comes from duration × rate × frame size, and
    holds while decoding too. A refused file gets a skipped record, so a re-run skips it."""
    from singer.data import media, prepare

    mkv = write_av(
        tmp_path / "src" / "narrow.mkv",
        indexed_frames(50, 64, 72),
        np.arange(50) / 25,
        tone(440, 2, 16000)[None],
        16000,
    )  # 72 px: decord cannot copy it out
    monkeypatch.setattr(media, "FALLBACK_MAX_BYTES", 20 * 72 * 64 * 3)  # 20 frames' worth
    with pytest.raises(MediaError, match="too large to decode in memory"):
        media.InMemoryVideo(mkv)
    monkeypatch.setattr(media, "expected_frames", lambda *args: 0)  # headers that say nothing
    with pytest.raises(MediaError, match="too large to decode in memory"):
        media.InMemoryVideo(mkv)
    report = prepare.prepare_folder(
        tmp_path / "src", tmp_path / "cache", detect_faces=False, **SETTINGS
    )
    (entry,) = report["files"]
    assert entry["status"] == "skipped" and "too large to decode in memory" in entry["reason"]
    again = prepare.prepare_folder(
        tmp_path / "src", tmp_path / "cache", detect_faces=False, **SETTINGS
    )
    assert again["files"][0]["cached"] and again["files"][0]["status"] == "skipped"


def test_audio_is_decoded_clip_by_clip_with_the_same_samples(tmp_path):
    from singer.data.media import AudioStream, read_audio

    path = write_av(tmp_path / "a.mp4", None, None, tone(440, 5, 44100)[None], 44100)
    whole = read_audio(path, 16000)
    with AudioStream(path, 16000) as stream:
        for start in range(0, len(whole) + 16000, 16000):
            np.testing.assert_array_equal(
                stream.read(start, 16000), np.pad(whole, (0, 32000))[start : start + 16000]
            )
            assert len(stream._pending) <= 16000 + 4096  # one clip and one decoded chunk
        assert stream.decoded == len(whole)


def test_a_song_is_decoded_within_a_length_budget(tmp_path):
    from singer.data.media import read_audio

    song = write_wav(tmp_path / "song.wav", 3.0)
    assert len(read_audio(song, 16000, max_seconds=5)) == 48000
    with pytest.raises(MediaError, match="audio longer than 2 s"):
        read_audio(song, 16000, max_seconds=2)  # stops decoding there, whatever the length


KILL_SCRIPT = """
import os, signal, sys
from singer.data import prepare
done = []
real = prepare.prepare_file
def prepare_file(*args, **kwargs):
    record = real(*args, **kwargs)
    done.append(record)
    if len(done) == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # a kill at a known moment, mid-run
    return record
prepare.prepare_file = prepare_file
prepare.prepare_folder(sys.argv[1], sys.argv[2], size=int(sys.argv[4]), fps=25, clip_seconds=1.0,
                       min_seconds=0.5, detect_faces=False, force="--force" in sys.argv, progress=False)
"""


def cache_is_consistent(cache: Path, size: int) -> int:
    """Every clip the index names exists, at the size the index says; returns the clip count."""
    index = [json.loads(line) for line in (cache / "index.jsonl").read_text().splitlines()]
    for entry in index:
        assert entry["size"] == size
        with np.load(cache / entry["file"]) as data:
            assert data["frames"].shape[1:3] == (size, size), entry["file"]
    return len(index)


@pytest.mark.parametrize("kill_after", [1, 3])
def test_a_rerun_killed_midway_leaves_the_old_cache_whole(tmp_path, kill_after):
    from singer.data.prepare import prepare_folder

    src, cache = tmp_path / "src", tmp_path / "cache"
    for i in range(4):
        a_video(src / f"v{i}.mp4", seconds=2.0)
    first = prepare_folder(src, cache, detect_faces=False, **{**SETTINGS, "size": 16})
    assert cache_is_consistent(cache, 16) == first["counts"]["clips"] == 8
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    proc = run(str(script), str(src), str(cache), str(kill_after), "24")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert cache_is_consistent(cache, 16) == 8  # the old cache, untouched
    again = prepare_folder(src, cache, detect_faces=False, **{**SETTINGS, "size": 24})
    assert cache_is_consistent(cache, 24) == again["counts"]["clips"] == 8  # then the new one
    assert len(list((cache / "clips").iterdir())) == 8  # and the old clips are gone


def test_an_interrupted_rerun_keeps_the_old_index(tmp_path, monkeypatch):
    from singer.data import prepare

    src, cache = tmp_path / "src", tmp_path / "cache"
    for i in range(3):
        a_video(src / f"v{i}.mp4", seconds=2.0)
    prepare.prepare_folder(src, cache, detect_faces=False, **{**SETTINGS, "size": 16})
    real, done = prepare.prepare_file, []

    def interrupted(*args, **kwargs):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(real(*args, **kwargs))
        return done[-1]

    monkeypatch.setattr(prepare, "prepare_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare_folder(src, cache, detect_faces=False, **{**SETTINGS, "size": 24})
    assert cache_is_consistent(cache, 16) == 6  # not a partial index of the new size


WORKERS_SCRIPT = """
import sys, time
from singer.data.prepare import run_tasks

def sleepy(task):
    time.sleep(600)

if __name__ == "__main__":
    run_tasks([{"rel": str(i)} for i in range(2)], workers=2, on_done=lambda t, r: None, worker=sleepy)
"""


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return [int(c) for t in tasks for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_their_parent(tmp_path):
    script = tmp_path / "workers.py"
    script.write_text(WORKERS_SCRIPT)
    parent = subprocess.Popen([PY, str(script)], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < deadline:  # wait for the two pool workers to exist
            workers = [c for c in _children(parent.pid) if "spawn_main" in _cmdline(c)]
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert len(workers) >= 2, "the pool did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 60  # a bound for failing, not a timing assumption
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "workers outlived their parent"
    finally:
        for pid in [parent.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# -- the sweep folder -----------------------------------------------------------------------------
def test_a_sweep_folder_others_can_write_to_is_refused(tmp_path, capsys):
    from singer.sweep import main

    path = sweep_file(
        tmp_path, BASE_SWEEP + "space: {frontend.levels: {type: int, low: 1, high: 2}}\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    assert main([str(path), "--out", str(out), "--no-progress"]) == 2
    assert_one_line_error(
        capsys.readouterr().err, "writable by group or others", f"chmod -R go-w {out}"
    )
    assert {p.name for p in out.iterdir()} <= {"sweep.yaml"}  # no study, no jobs, no runs


# -- the local SLURM cluster ----------------------------------------------------------------------
def _listeners() -> dict[int, list[str]]:
    """Socket inode → listening addresses, from /proc/net/tcp and tcp6."""
    found: dict[int, list[str]] = {}
    for name, family in (("tcp", 4), ("tcp6", 6)):
        table = Path("/proc/net") / name
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hexaddr, port = fields[1].split(":")
            raw = bytes.fromhex(hexaddr)
            if family == 4:
                address = ".".join(str(b) for b in raw[::-1])
            else:  # four little-endian 32-bit words
                words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
                address = ":".join(b"".join(words).hex()[i : i + 4] for i in range(0, 32, 4))
            found.setdefault(int(fields[9]), []).append(f"{address}:{int(port, 16)}")
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


@pytest.mark.slurm
def test_local_slurm_daemons_listen_on_loopback_only(slurm_cluster):
    listeners = _listeners()
    loopback = ("127.", "0000:0000:0000:0000:0000:0000:0000:0001:")
    for daemon in ("slurmctld", "slurmd", "slurmdbd", "mariadb"):
        pid = int((slurm_cluster / "run" / f"{daemon}.pid").read_text())
        addresses = [a for inode in _socket_inodes(pid) for a in listeners.get(inode, [])]
        assert addresses, f"{daemon} (pid {pid}) has no listening socket"
        assert all(a.startswith(loopback) for a in addresses), (daemon, addresses)
