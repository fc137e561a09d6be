"""``python -m singer.evaluate`` on tiny trained checkpoints: metrics.json, MLflow, errors, bands.

Three checkpoints are trained once for the module (a few steps each, 32×32, 8 frames): SINGER
with its default MSM front-end, SINGER with the audio cross-attention switched off (a model that
ignores its audio), and the autoencoder (a model that does not generate video). They log to a
module-wide MLflow store named in their config, so the evaluator logs there too.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from singer.evaluate import main
from tiny import TINY
from singer.evaluation import EvalProtocol

REPO = Path(__file__).resolve().parent.parent
TRAIN = [
    TINY,
    "trainer.steps=4",
    "trainer.val_every=4",
    "trainer.log_every=2",
    "trainer.ckpt_every=4",
    "backbone.channels=[8,16,32]",
    "data.val_fraction=0.5",  # 2 held-out speakers: intervals need at least 2 units
    "tracking.experiment=t-evaluate",
]
MODELS = {
    "singer": [],  # frontend=msm, SFM bottleneck: the default SINGER
    "blind": ["frontend=mel", "backbone.audio_attention=false"],  # the audio reaches nothing
    "autoencoder": [
        "model=autoencoder",
        "trainer.steps=2",
        "trainer.val_every=2",
        "trainer.ckpt_every=2",
    ],
}
# A small, fast protocol: 2 clips in one batch, 2 DDIM steps.
SMALL = ["num_clips=2", "batch_size=2", "steps=2", "bootstrap=100"]


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('eval-mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, store) -> dict[str, tuple[Path, str]]:
    """``{name: (run dir, MLflow run id)}`` for :data:`MODELS`."""
    from singer.config import compose
    from singer.trainer import train

    root = tmp_path_factory.mktemp("eval-data")
    out = {}
    for name, extra in MODELS.items():
        cfg = compose([*TRAIN, f"data.root={root / 'synthsing'}", f"tracking.uri={store}", *extra])
        result = train(cfg, root / name, progress=False)
        out[name] = (root / name, result.run_id)
    mlflow.set_tracking_uri(None)
    return out


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    code = main([*args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def first_eval(trained, tmp_path_factory):
    """The CLI on the SINGER checkpoint (by path), logging to its MLflow run; ``(out dir, stdout)``."""
    out = tmp_path_factory.mktemp("first-eval")
    metrics = "metrics=[ssim,psnr,motion_fidelity,fid_offline,audio_stats]"
    code = main(
        [str(trained["singer"][0]), *sets(*SMALL, metrics), "--out", str(out), "--no-progress"]
    )
    assert code == 0
    return out


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# -- metrics.json and MLflow ---------------------------------------------------------------------
def test_cli_writes_resolved_protocol_and_logs_eval_metrics(trained, first_eval, store):
    data = read_json(first_eval / "metrics.json")
    protocol = data["protocol"]
    assert set(protocol) == set(EvalProtocol().to_dict())  # every key is written, resolved:
    assert (
        protocol["num_frames"] == 8
        and protocol["resolution"] == 32
        and protocol["crop"] == "center"
    )
    assert (
        protocol["steps"] == 2
        and protocol["seeds"] == [0]
        and isinstance(protocol["guidance_scale"], float)
    )
    assert (
        data["protocol_hash"] == EvalProtocol(**protocol).hash()
        and len(data["protocol_hash"]) == 12
    )
    assert (
        data["model"] == "singer"
        and data["step"] == 4
        and data["split"] == "val"
        and len(data["clips"]) == 2
    )
    run_id = trained["singer"][1]
    assert data["run_id"] == run_id
    metrics = data["metrics"]
    assert {"ssim", "psnr", "fid_offline", "motion/face_rate", "audio/rms_db"} <= set(metrics)
    assert -1 <= metrics["ssim"] <= 1 and metrics["psnr"] > 0 and metrics["fid_offline"] >= 0
    lo, hi = data["ci"]["ssim"]
    assert lo <= metrics["ssim"] <= hi  # per-clip metrics carry a bootstrap CI over speakers
    assert data["n"]["ssim"] == 2 and data["unit"] == "speakers"
    assert len(set(data["unit_of_clip"].values())) == 2  # the 2 clips are 2 held-out speakers
    assert set(data["units"]["ssim"]) == set(data["unit_of_clip"].values())
    assert data["bands"] is None and data["probes"] is None

    run = MlflowClient(store).get_run(run_id)
    logged = run.data.metrics
    assert logged["eval/ssim"] == pytest.approx(metrics["ssim"])
    assert logged["eval/psnr"] == pytest.approx(metrics["psnr"])
    assert logged["eval/ssim_ci_lo"] == pytest.approx(lo) and logged[
        "eval/ssim_ci_hi"
    ] == pytest.approx(hi)
    assert (
        "eval/fid_offline" in logged and "train/loss" in logged
    )  # the training run itself, not a new one
    assert (
        run.data.tags["eval.protocol"] == data["protocol_hash"]
        and run.data.tags["eval.split"] == "val"
    )
    artifacts = [a.path for a in MlflowClient(store).list_artifacts(run_id, "eval")]
    assert "eval/metrics.json" in artifacts


def test_run_id_target_and_the_same_seed_give_identical_metrics(
    trained, first_eval, store, monkeypatch, capsys
):
    """By MLflow run id (resolved through the run's out_dir tag), default output directory
    ``<run dir>/eval/<protocol hash>/``; the same protocol and seed reproduce every number."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    run_dir, run_id = trained["singer"]
    metrics = "metrics=[ssim,psnr,motion_fidelity,fid_offline,audio_stats]"
    code, out, err = run_cli(run_id, *sets(*SMALL, metrics), "--no-mlflow", capsys=capsys)
    assert code == 0, err
    first = read_json(first_eval / "metrics.json")
    again_path = run_dir / "eval" / first["protocol_hash"] / "metrics.json"
    assert again_path.is_file() and str(again_path) in out
    again = read_json(again_path)
    assert again["clips"] == first["clips"]
    assert again["metrics"] == first["metrics"] and again["ci"] == first["ci"]

    code, _, err = run_cli(
        str(run_dir),
        *sets(*SMALL, "metrics=[ssim,psnr]"),
        "--seeds",
        "1",
        "--no-mlflow",
        "--out",
        str(run_dir / "seed1"),
        capsys=capsys,
    )
    assert code == 0, err
    other = read_json(run_dir / "seed1" / "metrics.json")
    assert other["protocol"]["seeds"] == [1] and other["protocol_hash"] != first["protocol_hash"]
    assert other["metrics"]["ssim"] != first["metrics"]["ssim"]  # another seed, other noise


# -- errors: exit status 2 with a message ------------------------------------------------------------
ERRORS = [
    # (model, CLI arguments, texts the message must contain)
    (
        "singer",
        sets("metrics=[ssim,fidd]"),
        ["unknown metric 'fidd'", "Known metric names", "fid_offline"],
    ),
    ("singer", sets("num_clip=2"), ["unknown protocol keys ['num_clip']", "num_clips"]),
    ("singer", sets("steps=0"), ["invalid evaluation protocol", "steps must be >= 1"]),
    (
        "singer",
        sets("steps=ten", "seeds=[0,x]"),
        ["steps must be an integer, got 'ten'", "seeds must be a list of integers"],
    ),
    (
        "singer",
        sets("metric_kwargs.fid.weights=/w/x.pt"),
        ["metric_kwargs names metrics that are not evaluated"],
    ),
    (
        "singer",
        ["--protocol", "/no/such/protocol.yaml"],
        ["protocol file /no/such/protocol.yaml does not exist"],
    ),
    (
        "singer",
        sets("metrics=[ssim]", "metric_kwargs.ssim.sigmaa=2"),
        ["metric 'ssim' rejects metric_kwargs.ssim", "sigmaa"],
    ),
    ("autoencoder", [], ["model 'autoencoder' does not generate video", "generated clips only"]),
    (None, [], ["no checkpoint at"]),
    (
        "0123456789abcdef0123456789abcdef",
        [],
        ["as an MLflow run id", "no MLflow store at", "MLFLOW_TRACKING_URI"],
    ),
]


@pytest.mark.parametrize(
    "model,args,texts",
    ERRORS,
    ids=[
        "unknown-metric",
        "unknown-key",
        "bad-value",
        "bad-type",
        "kwargs-unused",
        "no-protocol-file",
        "bad-metric-kwarg",
        "not-generative",
        "no-checkpoint",
        "unknown-run-id",
    ],
)
def test_request_errors_exit_2_with_a_message(trained, tmp_path, capsys, model, args, texts):
    target = str(trained[model][0]) if model in trained else model or str(tmp_path / "missing")
    code, out, err = run_cli(
        target, *args, "--no-mlflow", "--out", str(tmp_path / "out"), capsys=capsys
    )
    assert code == 2, (out, err)
    assert "error: " in err and "Traceback" not in err
    for text in texts:
        assert text in err, err
    assert not (tmp_path / "out").exists()


def test_an_unknown_run_id_in_the_store_names_the_store(trained, store, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    code, _, err = run_cli("f" * 32, "--no-mlflow", capsys=capsys)
    assert code == 2 and f"no MLflow run '{'f' * 32}' in {store}" in err, err


@pytest.mark.parametrize(
    "weights", [None, "/no/such/dir/inception_v3.pt"], ids=["unset", "missing-file"]
)
def test_missing_inception_weights_name_the_file_and_the_key(trained, tmp_path, capsys, weights):
    """FID without its local Inception-v3 file; the missing-file case through the real command
    line (a subprocess)."""
    overrides = ["metrics=[ssim,fid]"] + (
        [f"metric_kwargs.fid.weights={weights}"] if weights else []
    )
    args = [str(trained["singer"][0]), *sets(*overrides), "--no-mlflow"]
    if weights is None:
        code, _, err = run_cli(*args, capsys=capsys)
    else:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
        proc = subprocess.run(
            [sys.executable, "-m", "singer.evaluate", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        code, err = proc.returncode, proc.stderr
    assert code == 2, err
    assert "Traceback" not in err and "Inception-v3 weights" in err
    assert "metric_kwargs.fid.weights" in err and "metric_kwargs.fid.sha256" in err
    assert "inception_v3" in err and "sha256sum" in err  # which file, and how to pin it
    if weights:
        assert weights in err and "not a file" in err
    else:
        assert "is not set" in err


# -- the frequency-band ablation and the probes ----------------------------------------------------
def band_rows(path: Path) -> dict[tuple[str, str], dict]:
    return {(r["band"], r["target"]): r for r in read_json(path)}


def test_a_model_that_ignores_its_audio_has_a_zero_sensitivity_matrix(trained, tmp_path, capsys):
    """SINGER with backbone.audio_attention=false: the tokens reach nothing, so stopping any band
    changes no pixel, no cue and no metric (metrics score against the same, full-band audio)."""
    metrics = "metrics=[ssim,psnr,motion_fidelity,fid_offline,audio_stats]"
    code, _, err = run_cli(
        str(trained["blind"][0]),
        "--bands",
        *sets(*SMALL, metrics, "seeds=[0,1]"),
        "--no-mlflow",
        "--out",
        str(tmp_path),
        capsys=capsys,
    )
    assert code == 0, err
    rows = band_rows(tmp_path / "band_sensitivity.json")
    bands = list(dict.fromkeys(band for band, _ in rows))
    assert bands == [
        "0-250Hz",
        "250-500Hz",
        "500-1kHz",
        "1k-2kHz",
        "2k-4kHz",
        "4k-8kHz",
    ]  # the default edges
    targets = {target for _, target in rows}
    assert {
        "pixel_l1",
        "cue/mouth_open",
        "cue/brow",
        "ssim",
        "psnr",
        "fid_offline",
        "motion/face_rate",
    } <= targets
    assert not any(
        t.startswith("audio/") for t in targets
    )  # audio_stats describes the input: left out
    for (band, target), row in rows.items():
        if (
            row["delta"] is None
        ):  # a cue the estimator could not read (no face in an untrained model's frames)
            assert target.startswith(("cue/", "motion/")), row
            continue
        assert abs(row["delta"]) < 1e-6 and abs(row["ci_lo"]) < 1e-6 and abs(row["ci_hi"]) < 1e-6, (
            row
        )
    assert all(rows[(band, "pixel_l1")]["delta"] == 0.0 for band in bands)
    assert (tmp_path / "band_sensitivity.png").stat().st_size > 5000


def test_bands_and_probes_write_heatmaps_and_tables_with_cis_and_log_them(
    trained, tmp_path, store, capsys
):
    run_dir, run_id = trained["singer"]
    protocol = [
        *SMALL,
        "metrics=[ssim,psnr]",
        "band_edges=[0,1000,4000,8000]",
        "probe_folds=3",
        "probe_frontends=[mel]",
    ]
    code, out, err = run_cli(
        str(run_dir), "--bands", "--probes", *sets(*protocol), "--out", str(tmp_path), capsys=capsys
    )
    assert code == 0, err
    files = {p.name for p in tmp_path.iterdir()}
    assert {
        "metrics.json",
        "band_sensitivity.json",
        "band_sensitivity.png",
        "band_sensitivity_metrics.png",
        "probe_r2.json",
        "probe_r2.png",
    } <= files
    for png in ("band_sensitivity.png", "band_sensitivity_metrics.png", "probe_r2.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    bands = read_json(tmp_path / "band_sensitivity.json")
    assert {r["band"] for r in bands} == {"0-1kHz", "1k-4kHz", "4k-8kHz"}
    for row in bands:
        assert set(row) == {"band", "lo_hz", "hi_hz", "target", "delta", "ci_lo", "ci_hi", "n"}
        if row["delta"] is not None:
            assert row["ci_lo"] <= row["delta"] <= row["ci_hi"], row
    pixel = [r["delta"] for r in bands if r["target"] == "pixel_l1"]
    assert max(pixel) > 0  # this model does listen: the zero matrix above is not trivially zero

    probes = read_json(tmp_path / "probe_r2.json")
    assert {r["frontend"] for r in probes} == {"msm@step4", "mel@init"}
    assert {r["band"] for r in probes} == {"full", "0-1kHz", "1k-4kHz", "4k-8kHz"}
    assert {r["cue"] for r in probes} >= {"mouth_open", "brow", "sway"}
    for row in probes:
        assert set(row) == {
            "frontend",
            "band",
            "lo_hz",
            "hi_hz",
            "cue",
            "r2",
            "ci_lo",
            "ci_hi",
            "n",
        }
        if row["r2"] is not None:
            assert row["ci_lo"] <= row["r2"] <= row["ci_hi"] and row["r2"] <= 1.0, row
    data = read_json(tmp_path / "metrics.json")
    assert data["bands"] == bands and data["probes"] == probes and data["probe_errors"] == {}
    assert "probe of" not in err

    client = MlflowClient(store)
    logged = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert {
        "eval/metrics.json",
        "eval/band_sensitivity.json",
        "eval/band_sensitivity.png",
        "eval/band_sensitivity_metrics.png",
        "eval/probe_r2.json",
        "eval/probe_r2.png",
    } <= logged
    run = client.get_run(run_id)
    table = client.load_table(
        run.info.experiment_id, "eval/band_sensitivity.json", run_ids=[run_id]
    )
    assert len(table) == len(bands) and set(table.columns) >= {
        "band",
        "target",
        "delta",
        "ci_lo",
        "ci_hi",
    }
    assert {"path": "eval/probe_r2.json", "type": "table"} in json.loads(
        run.data.tags["mlflow.loggedArtifacts"]
    )
    assert run.data.tags["eval.bands"] == "true" and run.data.tags["eval.probes"] == "true"


def test_logged_tables_replace_rather_than_append(tmp_path):
    """Re-evaluating a run must not duplicate its table rows (mlflow.log_table appends)."""
    from singer import tracking

    uri = f"sqlite:///{tmp_path / 'tables.db'}"
    run = tracking.start_run("t-tables", uri=uri)
    rows = [{"band": "0-1kHz", "delta": 0.5, "ci_lo": math.nan, "ci_hi": 1.0}]
    tracking.log_table(run, rows, "eval/t.json")
    tracking.log_table(run, rows * 2, "eval/t.json")
    client = MlflowClient(uri)
    info = client.get_run(run.run_id)
    table = client.load_table(info.info.experiment_id, "eval/t.json", run_ids=[run.run_id])
    assert len(table) == 2 and table["ci_lo"].isna().all() and list(table["delta"]) == [0.5, 0.5]
    assert json.loads(info.data.tags["mlflow.loggedArtifacts"]) == [
        {"path": "eval/t.json", "type": "table"}
    ]
