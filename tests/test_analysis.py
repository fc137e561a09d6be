"""analysis/: loaders, aggregation and plots on small synthetic frames, then the three notebooks
executed headless (nbclient) against an MLflow store filled by a tiny real, evaluated sweep."""

import json
import os
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import AnalysisError, plots, runs, stats
from tiny import FAST

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("frequency_bands", "spectral_scales", "compare_runs")


# -- synthetic frames ---------------------------------------------------------------------------
def search_frame() -> pd.DataFrame:
    """What ``mlflow.search_runs`` returns for a small sweep: 2 MSM levels × 2 seeds, a mel
    reference (2 seeds), all with evaluator metrics and their CIs, plus the sweep's parent run.
    Params are strings, as MLflow stores them; missing params are NaN."""
    rows = []
    for i, (frontend, levels, seed, ssim) in enumerate(
        [
            ("msm", "1", "0", 0.50),
            ("msm", "1", "1", 0.54),
            ("msm", "2", "0", 0.60),
            ("msm", "2", "1", 0.62),
            ("mel", None, "0", 0.40),
            ("mel", None, "1", 0.44),
        ]
    ):
        rows.append(
            {
                "run_id": f"r{i}",
                "status": "FINISHED",
                "experiment_id": "1",
                "tags.mlflow.runName": f"trial{i}",
                "tags.sweep": "tiny",
                "tags.trial": str(i // 2),
                "tags.seed": seed,
                "tags.variant": "mel" if frontend == "mel" else "search",
                "tags.model": "singer",
                "tags.frontend": frontend,
                "tags.backbone": "unet3d",
                "tags.bottleneck_filter": "sfm",
                "tags.sweep.role": None,
                "params.frontend.levels": levels,
                "params.frontend.wavelet": "haar" if levels else None,
                "params.data.kinds": "None",
                "params.data.synth.kind": "singing",
                "params.data.name": "synthsing",
                "metrics.eval/ssim": ssim,
                "metrics.eval/ssim_ci_lo": ssim - 0.05,
                "metrics.eval/ssim_ci_hi": ssim + 0.05,
                "metrics.eval/psnr": 10 + 10 * ssim,
                "metrics.final/val_mse": 1 - ssim,
                "metrics.train/lr": 1e-3,
            }
        )
    rows.append(
        {
            "run_id": "parent",
            "status": "FINISHED",
            "experiment_id": "1",
            "tags.sweep.role": "parent",
            "tags.mlflow.runName": "tiny",
            "metrics.trials/done": 3.0,
            "metrics.best/eval/ssim": 0.61,
        }
    )
    frame = pd.DataFrame(rows)
    for column in frame.columns:  # pandas 3 string columns, as search_runs gives them
        if column.startswith(("tags.", "params.")):
            frame[column] = frame[column].astype("str").where(frame[column].notna())
    return frame


@pytest.fixture
def frame() -> pd.DataFrame:
    raw = search_frame()
    return runs.add_id_columns(
        raw[raw["tags.sweep.role"].fillna("") != "parent"].reset_index(drop=True)
    )


def band_frame() -> pd.DataFrame:
    """A load_band_tables() result: 2 front-ends × 2 runs × 2 bands × (pixel_l1, 2 cues, ssim)."""
    rows = []
    for frontend, run_ids in (("msm", ("a", "b")), ("mel", ("c", "d"))):
        for r, run_id in enumerate(run_ids):
            for band, lo in (("0-1kHz", 0.0), ("1k-8kHz", 1000.0)):
                for target, base in (
                    ("pixel_l1", 0.01),
                    ("cue/mouth_open", 0.1),
                    ("cue/brow", np.nan),
                    ("ssim", -0.02),
                ):
                    delta = (
                        base
                        * (2 if band == "0-1kHz" else 1)
                        * (1 + 0.1 * r)
                        * (2 if frontend == "msm" else 1)
                    )
                    rows.append(
                        {
                            "band": band,
                            "lo_hz": lo,
                            "hi_hz": 1000.0 if lo == 0 else 8000.0,
                            "target": target,
                            "delta": delta,
                            "ci_lo": delta - 0.001,
                            "ci_hi": delta + 0.001,
                            "run_id": run_id,
                            "frontend": frontend,
                            "config": frontend,
                        }
                    )
    return pd.DataFrame(rows)


def probe_frame() -> pd.DataFrame:
    rows = []
    for run_id, trained in (("a", "msm@step50"), ("b", "msm@step100")):
        for frontend in (trained, "mel@init"):
            for band, lo in (("full", 0.0), ("0-1kHz", 0.0), ("1k-8kHz", 1000.0)):
                for cue, r2 in (("mouth_open", 0.6), ("brow", 0.2)):
                    value = (
                        r2
                        + (0.1 if frontend.startswith("msm") else 0.0)
                        - (0.2 if band == "1k-8kHz" else 0.0)
                    )
                    rows.append(
                        {
                            "frontend": frontend,
                            "band": band,
                            "lo_hz": lo,
                            "hi_hz": 8000.0,
                            "cue": cue,
                            "r2": value,
                            "ci_lo": value - 0.05,
                            "ci_hi": value + 0.05,
                            "run_id": run_id,
                            "run_frontend": "msm",
                        }
                    )
    table = pd.DataFrame(rows)
    table["series"] = [runs.probe_series(f) for f in table["frontend"]]
    return table


# -- analysis.runs --------------------------------------------------------------------------------
def test_id_columns_are_typed_and_labelled(frame):
    assert list(frame.columns[: len(runs.ID_COLUMNS)]) == list(runs.ID_COLUMNS)
    assert list(frame["frontend"]) == ["msm"] * 4 + ["mel"] * 2
    assert list(frame["seed"]) == [0, 1, 0, 1, 0, 1] and str(frame["seed"].dtype) == "Int64"
    assert list(frame["levels"].iloc[:4]) == [1, 1, 2, 2] and frame["levels"].iloc[4:].isna().all()
    assert list(frame["config"]) == ["msm L1 haar"] * 2 + ["msm L2 haar"] * 2 + ["mel"] * 2
    assert set(frame["data_kind"]) == {"singing"}  # data.kinds null → the SynthSing kind
    assert frame["wavelet"].iloc[4] is None  # a missing param is None, not NaN or "None"


@pytest.mark.parametrize(
    "kinds,synth,name,expected",
    [
        ('["talking", "singing"]', "mixed", "prepared", "singing+talking"),
        ('["talking"]', None, None, "talking"),
        ("None", "singing", "synthsing", "singing"),
        (np.nan, "mixed", np.nan, "mixed"),
        ("None", "singing", "prepared", "all"),
        (None, None, None, "all"),
    ],
)
def test_data_kind(kinds, synth, name, expected):
    assert runs._data_kind(kinds, synth, name) == expected


def test_metric_selection_leaves_out_cis_and_sweep_parent_metrics(frame):
    assert runs.metric_names(frame) == ["eval/psnr", "eval/ssim", "final/val_mse", "train/lr"]
    assert runs.pick_metrics(frame) == ["eval/psnr", "eval/ssim"]
    assert runs.headline_metrics(frame) == ["eval/psnr", "eval/ssim", "final/val_mse"]
    no_eval = frame.drop(columns=[c for c in frame.columns if c.startswith("metrics.eval/")])
    assert runs.pick_metrics(no_eval) == ["final/val_mse"]
    with pytest.raises(
        AnalysisError, match="no eval/\\* metric.*metrics present: \\['train/lr'\\]"
    ):
        runs.pick_metrics(no_eval.drop(columns=["metrics.final/val_mse"]))


def test_metrics_long_carries_each_runs_own_ci(frame):
    long = runs.metrics_long(frame, ["eval/ssim", "eval/psnr"])
    assert len(long) == 12 and set(long["metric"]) == {"eval/ssim", "eval/psnr"}
    ssim = long[long["metric"] == "eval/ssim"].set_index("run_id")
    assert ssim.loc["r0", "value"] == 0.5 and ssim.loc["r0", "run_ci_lo"] == pytest.approx(0.45)
    assert long[long["metric"] == "eval/psnr"]["run_ci_lo"].isna().all()
    with pytest.raises(AnalysisError, match="lacks column\\(s\\) \\['metrics.eval/fvd'\\]"):
        runs.metrics_long(frame, ["eval/fvd"])


def test_table_artifacts_in_every_layout():
    split = {"columns": ["band", "delta"], "data": [["0-1kHz", 0.1], ["1k-8kHz", None]]}
    assert runs.table_from_json(split).shape == (2, 2)
    assert list(runs.table_from_json([{"a": 1}, {"a": 2}])["a"]) == [1, 2]
    assert list(runs.table_from_json({"a": [1, 2]})["a"]) == [1, 2]
    with pytest.raises(AnalysisError, match="not a table artifact"):
        runs.table_from_json("x")
    assert (
        runs.probe_series("msm@step50") == "msm (trained)"
        and runs.probe_series("mel@init") == "mel@init"
    )
    empty = pd.DataFrame()
    empty.attrs.update(missing_runs=["x", "y"], runs=3, artifact="eval/probe_r2.json")
    assert runs.missing_note(empty).startswith("2 of 3 runs have no eval/probe_r2.json")


# -- analysis.stats -------------------------------------------------------------------------------
def test_aggregate_gives_mean_bootstrap_ci_and_n():
    data = pd.DataFrame({"g": ["a", "a", "a", "b", "c"], "value": [1.0, 2.0, 3.0, 5.0, np.nan]})
    table = stats.aggregate(data, ["g"], n_boot=200).set_index("g")
    assert table.loc["a", "mean"] == 2.0 and table.loc["a", "n"] == 3
    assert 1.0 <= table.loc["a", "ci_lo"] < 2.0 < table.loc["a", "ci_hi"] <= 3.0
    assert table.loc["b", ["mean", "ci_lo", "ci_hi"]].tolist() == [
        5.0,
        5.0,
        5.0,
    ]  # one run: no spread
    assert np.isnan(table.loc["c", "mean"]) and table.loc["c", "n"] == 0
    assert list(stats.aggregate(data.iloc[:0], ["g"]).columns) == ["g", *stats.AGG_COLUMNS]
    assert stats.format_ci(0.5, 0.4, 0.6, 2) == "0.5 [0.4, 0.6]"
    assert stats.format_ci(0.5, 0.5, 0.5) == "0.5" and stats.format_ci(np.nan, 0, 1) == "–"


# -- analysis.plots -------------------------------------------------------------------------------
def test_band_heatmaps_aggregate_runs_per_frontend(tmp_path):
    fig, table = plots.band_heatmaps(band_frame(), group="frontend", n_boot=200)
    assert len(fig.axes) == 3  # two panels and one colour bar
    assert [ax.get_title() for ax in fig.axes[:2]] == ["msm  (2 runs)", "mel  (2 runs)"]
    assert set(table["target"]) == {
        "pixel_l1",
        "cue/mouth_open",
        "cue/brow",
    }  # ssim is not a default target
    cell = table[
        (table["frontend"] == "msm") & (table["band"] == "0-1kHz") & (table["target"] == "pixel_l1")
    ]
    assert cell["mean"].item() == pytest.approx(0.042) and cell["n"].item() == 2
    assert cell["ci_lo"].item() <= cell["mean"].item() <= cell["ci_hi"].item()
    assert table[table["target"] == "cue/brow"]["mean"].isna().all()
    paths = plots.save_figure(fig, tmp_path, "bands", close=True)
    assert [p.name for p in paths] == ["bands.png", "bands.svg"] and all(
        p.stat().st_size > 1000 for p in paths
    )

    fig, with_metric = plots.band_heatmaps(band_frame(), targets=["ssim", "cue/"], n_boot=50)
    assert set(with_metric["target"]) == {"ssim", "cue/mouth_open", "cue/brow"}
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "ssim",
        "mouth_open",
        "brow",
    ]  # as asked
    with pytest.raises(AnalysisError, match="no band-sensitivity target matches \\['fid'\\]"):
        plots.band_heatmaps(band_frame(), targets=["fid"])
    one_run = band_frame()[lambda f: f["run_id"] == "a"]
    _, single = plots.band_heatmaps(one_run, n_boot=50)
    row = single[(single["band"] == "1k-8kHz") & (single["target"] == "pixel_l1")]
    assert row["ci_lo"].item() == pytest.approx(0.019) and row["ci_hi"].item() == pytest.approx(
        0.021
    )  # its own CI
    empty_fig, empty = plots.band_heatmaps(band_frame().iloc[:0])
    assert empty.empty and "No band-sensitivity tables yet" in empty_fig.axes[0].texts[0].get_text()


def test_band_order_puts_full_first_then_by_frequency():
    frame = pd.DataFrame(
        {"band": ["2k-4kHz", "full", "0-250Hz", "250-500Hz"], "lo_hz": [2000.0, 0.0, 0.0, 250.0]}
    )
    assert plots.band_order(frame) == ["full", "0-250Hz", "250-500Hz", "2k-4kHz"]


def test_probe_r2_plot_counts_identical_rows_once():
    fig, table = plots.probe_r2_plot(probe_frame(), hue="series", n_boot=100)
    assert [ax.get_title() for ax in fig.axes] == ["mouth_open", "brow"]
    assert set(table["series"]) == {"msm (trained)", "mel@init"}
    mel = table[
        (table["series"] == "mel@init") & (table["band"] == "full") & (table["cue"] == "mouth_open")
    ]
    assert mel["n"].item() == 1 and mel["mean"].item() == pytest.approx(
        0.6
    )  # the same init in both runs
    assert mel["ci_lo"].item() == pytest.approx(0.55)  # so its own CI over folds is kept
    with pytest.raises(AnalysisError, match="cues \\['nod'\\] are not in the probe table"):
        plots.probe_r2_plot(probe_frame(), hue="series", cues=["nod"])


def test_metric_vs_levels_draws_curves_and_references(frame):
    fig, table = plots.metric_vs_levels(frame, ["eval/ssim", "final/val_mse"], n_boot=200)
    assert [ax.get_title() for ax in fig.axes] == ["eval/ssim", "final/val_mse"]
    curves = table[table["role"] == "scale"].set_index(["metric", "levels"])
    assert curves.loc[("eval/ssim", 1.0), "mean"] == pytest.approx(0.52)
    assert curves.loc[("eval/ssim", 2.0), "n"] == 2
    ref = table[(table["role"] == "reference") & (table["metric"] == "eval/ssim")]
    assert ref["config"].item() == "mel" and ref["mean"].item() == pytest.approx(0.42)
    with pytest.raises(AnalysisError, match="lacks column"):
        plots.metric_vs_levels(frame, ["eval/ssim"], hue="no_such_column")


def test_compare_table_wide_and_plot(frame):
    table = plots.compare_table(
        frame, ["frontend", "data_kind"], ["eval/ssim", "eval/psnr"], n_boot=200
    )
    assert len(table) == 4 and set(table["n"]) == {2, 4}
    wide = plots.compare_wide(table, ["frontend", "data_kind"])
    assert list(wide.columns) == ["frontend", "data_kind", "eval/psnr", "eval/ssim", "runs"]
    mel = wide.set_index("frontend").loc["mel"]
    assert mel["eval/ssim"].startswith("0.42 [") and mel["runs"] == 2
    fig = plots.compare_plot(table, ["frontend", "data_kind"])
    assert [ax.get_title() for ax in fig.axes] == ["eval/ssim", "eval/psnr"]
    assert (
        "No metrics" in plots.compare_plot(table.iloc[:0], ["frontend"]).axes[0].texts[0].get_text()
    )


def test_notebooks_are_committed_without_outputs():
    for name in NOTEBOOKS:
        nb = nbformat.read(REPO / "analysis" / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, name


# -- a tiny real sweep, then the notebooks ----------------------------------------------------------
SWEEP = "nb_sweep"
SWEEP_OVERRIDES = [
    *(o for o in FAST if not o.startswith(("frontend=", "data.synth.clips="))),
    "frontend=msm",
    # 4 speakers, 2 of them held out: the probes' grouped folds need at least 2
    "data.synth.clips=8",
    "data.val_fraction=0.5",
]
EVALUATE = {
    "protocol": {
        "num_clips": 2,
        "batch_size": 2,
        "steps": 2,
        "bootstrap": 100,
        "metrics": ["ssim", "psnr"],
        "band_edges": [0, 1000, 4000, 8000],
        "probe_folds": 3,
    },
    "bands": True,
    "probes": True,
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict:
    """MSM at 1 and 2 DWT levels plus a mel reference, 2 seeds each, every trial evaluated with
    the band ablation and the probes, in a fresh MLflow store (debug launcher: in this process)."""
    from singer.sweep import main

    tmp = tmp_path_factory.mktemp("nb-sweep")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    spec = {
        "name": SWEEP,
        "overrides": [*SWEEP_OVERRIDES, f"data.root={tmp / 'synthsing'}"],
        "space": {"frontend.levels": {"type": "int", "low": 1, "high": 2}},
        "variants": {"mel": ["frontend=mel"]},
        "sampler": "grid",
        "objectives": [{"metric": "eval/ssim", "direction": "maximize"}],
        "evaluate": EVALUATE,
        "seeds": [0, 1],
        "limits": {"parallel": 1},
        "launcher": "debug",
        "timeout_min": 5,
        "mlflow": {"experiment": SWEEP},
    }
    path = tmp / f"{SWEEP}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        assert main([str(path), "--out", str(tmp / "out"), "--no-progress", "--poll", "0.1"]) == 0
    return {"uri": uri, "tmp": tmp}


@pytest.mark.slow
def test_runs_and_tables_load_from_a_real_sweep(swept):
    frame = runs.load_runs(SWEEP, uri=swept["uri"])
    assert (
        len(frame) == 6
        and set(frame["frontend"]) == {"msm", "mel"}
        and set(frame["seed"]) == {0, 1}
    )
    assert sorted(frame["config"].unique()) == ["mel", "msm L1 haar", "msm L2 haar"]
    assert runs.pick_metrics(frame) == ["eval/psnr", "eval/ssim"]
    by_sweep = runs.load_runs(None, sweep=SWEEP, uri=swept["uri"])
    assert sorted(by_sweep["run_id"]) == sorted(frame["run_id"])
    bands = runs.load_band_tables(frame, uri=swept["uri"])
    assert bands.attrs["missing_runs"] == [] and bands["run_id"].nunique() == 6
    assert set(bands["band"]) == {"0-1kHz", "1k-4kHz", "4k-8kHz"}
    assert (
        len(bands) == 6 * 3 * bands["target"].nunique()
    )  # one row per run × band × target, never twice
    probes = runs.load_probe_tables(frame, uri=swept["uri"])
    assert set(probes["series"]) == {"msm (trained)", "mel (trained)"}
    assert set(probes["run_frontend"]) == {"msm", "mel"}
    with pytest.raises(AnalysisError, match="no MLflow experiment \\(or sweep\\) 'nope'.*nb_sweep"):
        runs.load_runs("nope", uri=swept["uri"])


def execute_notebook(name: str, env: dict[str, str]) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "analysis" / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO / "analysis")}},
    )
    client.execute(env=env)
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_and_writes_its_figures(swept, name, tmp_path):
    results = tmp_path / "results"
    env = {
        **os.environ,
        # the kernelspec runs `python`: make that this interpreter
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": swept["uri"],
        "SINGER_EXPERIMENT": SWEEP,
        "SINGER_RESULTS_DIR": str(results),
        "MPLBACKEND": "Agg",
        "PYTHONWARNINGS": "ignore",
    }
    nb = execute_notebook(name, env)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    expected = {
        "frequency_bands": ["band_sensitivity", "probe_r2"],
        "spectral_scales": ["spectral_scales"],
        "compare_runs": ["compare_runs"],
    }[name]
    for figure in expected:
        for suffix in (".png", ".svg"):
            path = results / f"{SWEEP}-{figure}{suffix}"
            assert path.is_file() and path.stat().st_size > 2000, sorted(
                p.name for p in results.iterdir()
            )
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert f"6 finished runs of '{SWEEP}'" in text
    if name == "frequency_bands":
        assert "eval/band_sensitivity.json: every run has it" in text
    if name == "compare_runs":
        table = pd.read_csv(results / f"{SWEEP}-compare_runs.csv")
        assert {"eval/ssim", "eval/psnr", "final/val_mse"} <= set(table["metric"])
        assert {"mean", "ci_lo", "ci_hi", "n"} <= set(table.columns)
    # the committed notebook stays output-free: executing it did not write it back
    committed = json.loads((REPO / "analysis" / f"{name}.ipynb").read_text())
    assert all(not c.get("outputs") for c in committed["cells"])
