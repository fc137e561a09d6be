"""Training, exact resume, MLflow records and generation, on a tiny SynthSing set."""

import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from singer.config import compose
from singer.trainer import train

FAST = [
    "trainer=cpu_tiny",
    "trainer.sample_at_end=false",
    "data.synth.clips=6",
    "data.synth.seconds=2.0",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One tiny SynthSing set shared by every test in this module (generated on first use)."""
    return tmp_path_factory.mktemp("synthsing")


def overrides(data_root, *extra):
    return [*FAST, f"data.root={data_root}", *extra]


def assert_learns(result):
    """Validation loss (fixed batches and noise) drops clearly, and so does the training loss."""
    assert all(np.isfinite(result.losses))
    assert result.val_loss < 0.85 * result.initial_val_loss, (
        result.initial_val_loss,
        result.val_loss,
    )
    assert result.final_loss < result.first_loss, (result.first_loss, result.final_loss)


def test_cpu_tiny_singer_trains_and_logs(data_root, tmp_path):
    cfg = compose(
        overrides(
            data_root,
            "trainer.steps=40",
            "trainer.val_every=20",
            "trainer.sample_at_end=true",
            "tracking.experiment=t-train",
        )
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 40 and len(result.losses) == 40
    assert_learns(result)

    runs = mlflow.search_runs(experiment_names=["t-train"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    assert (
        run["params.frontend.name"] == "msm" and run["params.backbone.bottleneck_filter"] == "sfm"
    )
    assert (
        run["tags.frontend"] == "msm"
        and run["tags.backbone"] == "unet3d"
        and run["tags.model"] == "singer"
    )
    assert len(run["tags.git.commit"]) in (40, 7) or run["tags.git.commit"] == "unknown"
    assert run["tags.version.torch"].startswith("2.")
    assert np.isfinite(run["metrics.train/loss"]) and np.isfinite(run["metrics.val/loss"])
    assert int(run["params.params.total"]) > 10_000

    # the sample video artifact is a real mp4 with sound
    local = mlflow.artifacts.download_artifacts(
        run_id=run["run_id"], artifact_path="samples", dst_path=str(tmp_path)
    )
    videos = sorted(Path(local).glob("*.mp4"))
    assert len(videos) == 1
    import decord

    reader = decord.VideoReader(str(videos[0]))
    assert len(reader) == cfg.trainer.num_frames
    assert reader[0].shape == (32, 64, 3)  # generated | ground truth side by side
    audio = decord.AudioReader(str(videos[0]), sample_rate=16000, mono=True)
    assert audio.shape[1] >= cfg.trainer.num_frames / 25 * 16000


@pytest.mark.parametrize(
    "ablation",
    [
        ["frontend=raw"],
        ["frontend=mel", "backbone.bottleneck_filter=none"],
        ["frontend=sfm"],
        [
            "frontend=msm",
            "frontend.levels=4",
            "frontend.wavelet=db2",
            "backbone.bottleneck_filter=none",
        ],
        ["frontend=wav2vec2", "frontend.random_init=true", "frontend.encoder_layers=2"],
    ],
    ids=["raw", "mel-nosfm", "sfm", "msm4-db2-nosfm", "wav2vec2"],
)
def test_every_frontend_and_bottleneck_learns(data_root, tmp_path, ablation):
    cfg = compose(overrides(data_root, "trainer.steps=30", "trainer.val_every=30", *ablation))
    assert_learns(train(cfg, tmp_path / "run", progress=False))


def test_same_seed_same_weights_and_other_seed_differs(data_root, tmp_path):
    args = ("trainer.steps=3", "trainer.val_every=3", "frontend=mel")
    a = train(compose(overrides(data_root, *args)), tmp_path / "a", progress=False)
    b = train(compose(overrides(data_root, *args)), tmp_path / "b", progress=False)
    c = train(compose(overrides(data_root, *args, "seed=1")), tmp_path / "c", progress=False)
    wa, wb, wc = (torch.load(r.checkpoint, weights_only=True)["model"] for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert a.losses == b.losses


def _checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:  # not written yet
        return -1


def test_killed_run_resumes_to_identical_weights(data_root, tmp_path):
    """SIGKILL a training process after its first checkpoint, resume it, compare with a clean run."""
    # One thread on both sides: multi-threaded CPU kernels may order their reductions differently
    # in different processes, which changes last bits; resume itself must add no difference.
    args = overrides(
        data_root,
        "trainer.steps=16",
        "trainer.ckpt_every=4",
        "trainer.val_every=8",
        "trainer.threads=1",
        "tracking.experiment=t-resume",
    )
    threads = torch.get_num_threads()
    clean = train(compose(args), tmp_path / "clean", progress=False)

    killed_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "singer.train", *args, f"out_dir={killed_dir}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpt = killed_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    killed_at = -1
    while time.time() < deadline and proc.poll() is None:
        step = _checkpoint_step(ckpt) if ckpt.exists() else -1
        if 4 <= step < 16:
            proc.send_signal(signal.SIGKILL)
            killed_at = step
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_at >= 4, f"the run was not killed mid-way: {proc.stderr.read().decode()[-2000:]}"

    try:
        resumed = train(compose([*args, "trainer.resume=true"]), killed_dir, progress=False)
    finally:
        torch.set_num_threads(threads)  # trainer.threads is process-wide
    assert resumed.step == 16
    a = torch.load(clean.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    for part in ("model", "ema"):
        mismatched = {
            k: float((a[part][k].float() - b[part][k].float()).abs().max())
            for k in a[part]
            if not torch.equal(a[part][k], b[part][k])
        }
        assert not mismatched, (
            f"{part} differs after resume from step {killed_at} in {len(mismatched)}/{len(a[part])} tensors; "
            f"largest |Δ| {max(mismatched.values()):.3g}: {sorted(mismatched.items(), key=lambda kv: -kv[1])[:3]}"
        )
    assert resumed.losses == clean.losses

    # the resumed process continued the killed process's MLflow run instead of starting another
    runs = mlflow.search_runs(experiment_names=["t-resume"])
    assert len(runs) == 2
    assert resumed.run_id in set(runs["run_id"]) and set(runs["status"]) == {"FINISHED"}


def test_non_finite_loss_fails_the_run(data_root, tmp_path):
    cfg = compose(
        overrides(
            data_root,
            "trainer.steps=3",
            "trainer.lr=1e30",
            "trainer.grad_clip=1e30",
            "trainer.warmup_steps=1",
            "frontend=mel",
            "tracking.experiment=t-nan",
        )
    )
    from singer.trainer import NonFiniteLossError

    with pytest.raises(NonFiniteLossError):
        train(cfg, tmp_path / "nan", progress=False)
    run = mlflow.search_runs(experiment_names=["t-nan"]).iloc[0]
    assert run["status"] == "FAILED" and "NonFiniteLossError" in run["tags.error"]


def test_training_loss_never_stands_in_for_val_loss(data_root, tmp_path):
    """Validation without batches gives no val/loss: not to a sweep's pruner, not in the result
    or MLflow, and a sweep objective on val/loss fails saying why."""
    from singer.sweeps.trial import MissingMetricError, TrialJob
    from singer.trainer import Trainer

    cfg = compose(
        overrides(
            data_root,
            "trainer.steps=2",
            "trainer.val_every=1",
            "trainer.val_batches=0",
            "frontend=mel",
            "tracking.experiment=t-noval",
        )
    )
    reported = []
    trainer = Trainer(
        cfg, tmp_path / "run", reporter=lambda *report: reported.append(report), progress=False
    )
    result = trainer.fit()
    assert [step for step, _ in reported] == [1, 2]
    assert all(set(metrics) == {"train/loss"} for _, metrics in reported)
    assert result.val_loss is None and result.initial_val_loss is None
    assert not [k for k in result.metrics if "val" in k]
    assert not [k for k in mlflow.get_run(result.run_id).data.metrics if "val" in k]

    job = TrialJob(
        study_name="noval",
        storage="unused",
        trial_id=0,
        trial_number=0,
        seed=0,
        overrides=[],
        out_dir=str(tmp_path / "run"),
        metrics=["val/loss"],
        report_metric="val/loss",
        pruner={},
        sampler={},
        tracking_uri=None,
        experiment="t-noval",
    )
    with pytest.raises(MissingMetricError, match="validation had no batches") as info:
        job._objective_values(result)
    assert "train/loss" in str(info.value)  # what the trial did produce


def _write_wav(path: Path, seconds: float, sr: int, channels: int) -> None:
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.3 * np.sin(2 * np.pi * 330 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
    data = np.stack([tone] * channels, axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((data * 32767).astype("<i2").tobytes())


def test_generate_long_audio_from_png(data_root, tmp_path):
    """A 7 s 44.1 kHz stereo wav + an odd-sized RGBA png → an mp4 whose length matches the audio."""
    run_dir = tmp_path / "gen-run"
    train(
        compose(overrides(data_root, "trainer.steps=2", "trainer.val_every=2")),
        run_dir,
        progress=False,
    )
    from PIL import Image

    face = tmp_path / "face.png"
    Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (90, 70, 4), dtype=np.uint8), "RGBA"
    ).save(face)
    song = tmp_path / "song.wav"
    _write_wav(song, 7.0, 44100, 2)
    out = tmp_path / "out.mp4"
    cmd = [
        sys.executable,
        "-m",
        "singer.generate",
        "--checkpoint",
        str(run_dir),
        "--image",
        str(face),
        "--audio",
        str(song),
        "--out",
        str(out),
        "--steps",
        "2",
        "--seed",
        "3",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    import av
    import decord

    with av.open(str(out)) as container:
        streams = {s.type: s for s in container.streams}
        assert streams["video"].codec_context.name == "h264"
        assert streams["audio"].codec_context.name == "aac"
        assert streams["audio"].codec_context.sample_rate == 16000
    reader = decord.VideoReader(str(out))
    assert abs(len(reader) / reader.get_avg_fps() - 7.0) <= 1 / 25
    assert reader[0].shape == (32, 32, 3)

    # same seed → same bytes
    out2 = tmp_path / "out2.mp4"
    cmd[cmd.index(str(out))] = str(out2)
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    assert out.read_bytes() == out2.read_bytes()


def test_generate_reports_unreadable_inputs(data_root, tmp_path):
    run_dir = tmp_path / "gen-run"
    train(
        compose(overrides(data_root, "trainer.steps=1", "trainer.val_every=1", "frontend=mel")),
        run_dir,
        progress=False,
    )
    bogus = tmp_path / "notes.wav"
    bogus.write_text("not audio")
    face = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(face)
    base = [
        sys.executable,
        "-m",
        "singer.generate",
        "--checkpoint",
        str(run_dir),
        "--out",
        str(tmp_path / "o.mp4"),
    ]
    proc = subprocess.run(
        [*base, "--image", str(face), "--audio", str(bogus)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "cannot read audio" in proc.stderr
    proc = subprocess.run(
        [*base, "--image", str(bogus), "--audio", str(bogus)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "cannot read face image" in proc.stderr
    proc = subprocess.run(
        [
            *base[:3],
            "--checkpoint",
            str(tmp_path / "nowhere"),
            "--image",
            str(face),
            "--audio",
            str(bogus),
            "--out",
            "x.mp4",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "no checkpoint" in proc.stderr


def test_weight_decay_spares_gains_norms_biases_and_null_tokens():
    """AdamW decay would pull the MSM/SFM gains (identity = 1) towards 0 even with no gradient."""
    from singer.models.spec import get_model_spec
    from singer.optim import parameter_groups

    cfg = compose(["trainer=cpu_tiny", "frontend=msm", "backbone.channels=[8,16,32]"])
    model = get_model_spec("singer").build(cfg)
    decay, keep = parameter_groups(model, weight_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    kept = {names[id(p)] for p in keep["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert any(n.endswith("gains") for n in kept) and not any(n.endswith("gains") for n in decayed)
    assert any("null_audio" in n for n in kept)
    assert all(not n.endswith("bias") for n in decayed)
    assert any(n.endswith("conv_in.weight") for n in decayed)
    assert keep["weight_decay"] == 0.0 and decay["weight_decay"] == 0.5

    gains = [p for n, p in model.named_parameters() if n.endswith("gains")]
    optimizer = torch.optim.AdamW([decay, keep], lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert all(torch.equal(g, torch.ones_like(g)) for g in gains)  # untouched without a gradient
