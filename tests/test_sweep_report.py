"""A sweep with a ``compare`` section ends with a verdict, plots, band heatmaps and sample videos,
on disk and in the MLflow parent run (whose description holds the verdict). A tiny laptop-proxy
sweep (``experiment=laptop_proxy``, a few steps) run in-process with the debug launcher."""

import json

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from singer.sweep import main
from singer.sweeps.spec import SweepSpecError, load_sweep

PROXY = [
    "experiment=laptop_proxy",
    "trainer.steps=6",
    "trainer.val_every=6",
    "trainer.ckpt_every=6",
    "trainer.num_frames=24",
    "trainer.batch_size=4",
    "trainer.sample_steps=2",
    "data.synth.clips=8",
    "data.synth.seconds=2.0",
    "data.val_fraction=0.5",
]
COMPARE = {
    "reference": "mel",
    "metrics": ["audio_effect/mouth_open", "motion/mouth_open_r"],
    "plot": {"x": "frontend.levels"},
    "bands": True,
}


def sweep_file(tmp_path, data_root, **fields):
    data = {
        "name": "verdict",
        "overrides": [*PROXY, f"data.root={data_root}", "frontend=msm"],
        "space": {"frontend.levels": {"type": "choice", "values": [1, 2]}},
        "variants": {"mel": ["frontend=mel"]},
        "sampler": "grid",
        "objectives": [{"metric": "eval/audio_effect/mean", "direction": "maximize"}],
        "seeds": [0, 1],
        "limits": {"parallel": 1},
        "launcher": "debug",
        "timeout_min": 10,
        "mlflow": {"experiment": "verdict"},
        "evaluate": {
            "split": "val",
            "protocol": {
                "num_clips": 4,
                "steps": 2,
                "batch_size": 4,
                "bootstrap": 200,
                "metrics": ["motion_fidelity"],
                "band_edges": [0, 1000, 8000],
            },
        },
        "compare": COMPARE,
        **fields,
    }
    path = tmp_path / "verdict.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from singer.config import compose
    from singer.data.cache import data_cache

    root = tmp_path_factory.mktemp("proxy-synthsing")
    data_cache(compose([*PROXY, f"data.root={root}"]), progress=False)
    return root


@pytest.mark.slow
def test_a_compared_sweep_ends_with_a_verdict_plots_and_videos(tmp_path, data_root, capsys):
    out = tmp_path / "out"
    path = sweep_file(tmp_path, data_root)
    assert main([str(path), "--out", str(out), "--no-progress", "--poll", "0.1"]) == 0
    printed = capsys.readouterr().out
    assert "verdict (each arm − mel" in printed and "resolved" in printed

    report = out / "report"
    verdict = json.loads((report / "verdict.json").read_text())
    assert verdict["reference"] == "mel"
    arms = {row["arm"] for row in verdict["rows"]}
    assert arms == {"mel", "levels=1", "levels=2"}
    for row in verdict["rows"]:
        if row["arm"] == "mel":
            assert row["difference"] is None
        else:
            assert row["difference"]["unit"] == "speakers" and row["seeds"] == 2
            assert row["difference"]["verdict"] in ("tie", "resolved (+)", "resolved (−)", "n/a")
    text = (report / "verdict.md").read_text()
    assert (
        "| arm | value | − mel | verdict | seed SD |" in text
        and "`audio_effect/mouth_open`" in text
    )
    assert (report / "metrics_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    heatmaps = sorted(p.parent.name for p in report.glob("bands/*/band_sensitivity.png"))
    assert "mel" in heatmaps and len(heatmaps) == 2  # the best arm and the reference
    videos = sorted(p.name for p in (report / "samples").glob("*.mp4"))
    assert videos == ["levels=1.mp4", "levels=2.mp4", "mel.mp4"]

    runs = mlflow.search_runs(experiment_names=["verdict"])
    parent = runs[runs["tags.sweep.role"] == "parent"].iloc[0]
    client = MlflowClient()
    run = client.get_run(parent["run_id"])
    assert "| arm | value | − mel |" in run.data.tags["mlflow.note.content"]  # its description
    logged = {a.path for a in client.list_artifacts(parent["run_id"], "report")}
    assert "report/verdict.md" in logged and "report/metrics_vs_params.png" in logged
    assert {a.path for a in client.list_artifacts(parent["run_id"], "samples")} >= {
        "samples/mel.mp4"
    }
    experiment = client.get_experiment_by_name("verdict")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_compare_section_is_validated(tmp_path, data_root):
    for compare, problem in [
        ({**COMPARE, "reference": "ghost"}, "not a variant"),
        ({**COMPARE, "plot": {"x": "trainer.lr"}}, "not in the space"),
        ({**COMPARE, "metrics": ["eval/audio_effect/mouth_open"]}, "keys of metrics.json"),
        ({**COMPARE, "colour": "red"}, "unknown key"),
    ]:
        with pytest.raises(SweepSpecError, match=problem):
            load_sweep(sweep_file(tmp_path, data_root, compare=compare), compose_check=False)
    with pytest.raises(SweepSpecError, match="needs an 'evaluate' section"):
        load_sweep(
            sweep_file(
                tmp_path,
                data_root,
                evaluate=None,
                objectives=[{"metric": "val/loss", "direction": "minimize"}],
            ),
            compose_check=False,
        )
