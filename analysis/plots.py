"""Every figure and comparison table of the analysis notebooks.

Inputs are the tidy frames of :mod:`analysis.runs`; aggregation over seeds (or runs) goes
through :func:`analysis.stats.aggregate`. Each plotting function returns ``(figure, table)``:
the table holds exactly the numbers drawn, so a notebook can display it beside the figure.

Missing *columns* are a usage error (:class:`~analysis.runs.AnalysisError`, naming them);
missing *data* (no run evaluated yet, an empty selection) gives a figure that says what is
missing, so a notebook still runs end to end and shows what exists.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.runs import ID_COLUMNS, AnalysisError, metrics_long, require_columns
from analysis.stats import aggregate, format_ci

FULL_BAND = "full"  # the probe table's label for the unfiltered audio
DEFAULT_TARGETS = (
    "pixel_l1",
    "cue/",
)  # band-sensitivity targets shown by default (exact name or prefix)


def _plt():
    # lazy: start-up: matplotlib and seaborn take seconds; loading runs and stats needs neither
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    return plt, sns


# -- saving and notes ---------------------------------------------------------------------------
def save_figure(fig, results_dir: str | Path, name: str, *, close: bool = False) -> list[Path]:
    """Write ``<results_dir>/<name>.png`` (150 dpi) and ``.svg``; returns both paths."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    if close:
        import matplotlib.pyplot as plt  # lazy: start-up (see _plt)

        plt.close(fig)
    return paths


def note_figure(text: str, title: str = ""):
    """A figure that only says ``text``: what is missing and how to produce it."""
    plt, _ = _plt()
    fig, ax = plt.subplots(figsize=(7, 2.2))
    ax.axis("off")
    ax.text(
        0.0,
        0.5,
        "\n".join(textwrap.wrap(text, 90)),
        va="center",
        ha="left",
        fontsize=10,
        transform=ax.transAxes,
    )
    if title:
        ax.set_title(title, loc="left")
    return fig


def band_order(frame: pd.DataFrame) -> list[str]:
    """Band labels ordered by their lower edge, the unfiltered ``full`` band first."""
    require_columns(frame, ["band", "lo_hz"], "the band table")
    bands = frame[["band", "lo_hz"]].drop_duplicates("band")
    bands = bands.assign(full=bands["band"] != FULL_BAND).sort_values(
        ["full", "lo_hz"], kind="stable"
    )
    return list(bands["band"])


def _aggregate_keep_own_ci(
    frame: pd.DataFrame, by: Sequence[str], value: str, **kw
) -> pd.DataFrame:
    """Aggregate ``value`` over runs; a group of one run keeps the CI its table already has
    (over clips or folds), which is more informative than a zero-width interval."""
    table = aggregate(frame, by, value, **kw)
    if {"ci_lo", "ci_hi"} <= set(frame.columns) and not table.empty:
        own = (
            frame.groupby(list(by), sort=False, dropna=False)[["ci_lo", "ci_hi"]]
            .first()
            .reset_index()
        )
        table = table.merge(own, on=list(by), how="left", suffixes=("", "_own"))
        single = table["n"] == 1
        table.loc[single, "ci_lo"] = table.loc[single, "ci_lo_own"]
        table.loc[single, "ci_hi"] = table.loc[single, "ci_hi_own"]
        table = table.drop(columns=["ci_lo_own", "ci_hi_own"])
    return table


def _fill_missing(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """``frame`` with missing values of ``column`` (a run without that tag) shown as ``"–"``."""
    values = frame[column].astype(object)
    return frame.assign(**{column: values.where(values.notna(), "–")})


def _yerr(table: pd.DataFrame) -> np.ndarray:
    """Asymmetric error bars ``2×N`` from mean/ci columns (0 where a CI is missing)."""
    lo = (table["mean"] - table["ci_lo"]).clip(lower=0).fillna(0.0)
    hi = (table["ci_hi"] - table["mean"]).clip(lower=0).fillna(0.0)
    return np.vstack([lo.to_numpy(dtype=float), hi.to_numpy(dtype=float)])


def _grid(n: int, ncols: int, size: tuple[float, float]):
    plt, _ = _plt()
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


# -- frequency bands ----------------------------------------------------------------------------
def _select_targets(targets: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """Targets equal to an entry of ``wanted`` or starting with an entry ending in ``/``, in the
    order of ``wanted``."""
    chosen = []
    for want in wanted:
        for target in targets:
            match = target.startswith(want) if want.endswith("/") else target == want
            if match and target not in chosen:
                chosen.append(target)
    return chosen


def band_heatmaps(
    bands: pd.DataFrame,
    *,
    group: str = "frontend",
    targets: Sequence[str] = DEFAULT_TARGETS,
    value: str = "delta",
    n_boot: int = 1000,
):
    """Band-sensitivity heatmaps (bands × targets), one per ``group`` value, side by side.

    ``bands`` is :func:`analysis.runs.load_band_tables` output. A cell is the mean over the
    group's runs of the change when that band is stopped; its CI (in the table) is a bootstrap
    over runs, or the run's own CI over clips when the group has one run. Colours share one
    scale per target column across all panels (each column divided by its largest |mean|, since
    targets have different units); cells are annotated with the raw means.
    """
    require_columns(bands, [group, "band", "lo_hz", "target", value], "the band-sensitivity table")
    if bands.empty:
        return note_figure(
            "No band-sensitivity tables yet: evaluate runs with bands=True "
            "(eval/band_sensitivity.json).",
            "frequency-band sensitivity",
        ), pd.DataFrame()
    chosen = _select_targets(list(dict.fromkeys(bands["target"])), targets)
    if not chosen:
        raise AnalysisError(
            f"no band-sensitivity target matches {list(targets)}; "
            f"targets present: {sorted(bands['target'].unique())}"
        )
    frame = _fill_missing(bands[bands["target"].isin(chosen)], group)
    table = _aggregate_keep_own_ci(frame, [group, "band", "lo_hz", "target"], value, n_boot=n_boot)
    rows, groups = band_order(frame), list(dict.fromkeys(frame[group]))
    labels = {t: t.split("/", 1)[1] if t.startswith("cue/") else t for t in chosen}
    scale = (
        table.groupby("target")["mean"].apply(lambda s: s.abs().max()).replace(0.0, 1.0).fillna(1.0)
    )

    plt, sns = _plt()
    width = 1.0 + 0.75 * len(chosen)
    fig, axes = plt.subplots(
        1,
        len(groups),
        figsize=(width * len(groups) + 1.2, 1.2 + 0.42 * len(rows)),
        squeeze=False,
        sharey=True,
    )
    for i, (ax, name) in enumerate(zip(axes[0], groups)):
        cells = table[table[group] == name].pivot_table(
            index="band", columns="target", values="mean", aggfunc="first", dropna=False
        )
        cells = cells.reindex(index=rows, columns=chosen)
        sns.heatmap(
            cells / scale.reindex(chosen).to_numpy(),
            annot=cells.to_numpy(),
            fmt=".2g",
            cmap="vlag",
            center=0.0,
            vmin=-1,
            vmax=1,
            ax=ax,
            cbar=i == len(groups) - 1,
            annot_kws={"size": 7},
            cbar_kws={"label": f"{value} / max |{value}| of the column"},
            xticklabels=[labels[t] for t in chosen],
            yticklabels=rows,
        )
        runs = int(frame.loc[frame[group] == name, "run_id"].nunique()) if "run_id" in frame else 0
        ax.set_title(f"{name}" + (f"  ({runs} runs)" if runs else ""))
        ax.set_xlabel("")
        ax.set_ylabel("stopped band" if i == 0 else "")
        ax.tick_params(axis="x", rotation=45)
        ax.tick_params(axis="y", rotation=0)
        ax.grid(False)
    if table["mean"].isna().all():
        fig.suptitle("every cell is undefined (no face found in the generated frames?)", fontsize=9)
    elif table["mean"].isna().any():
        fig.suptitle(
            "blank cell: undefined (the estimator found no face in the generated frames)",
            fontsize=9,
        )
    fig.tight_layout()
    return fig, table


def probe_r2_plot(
    probes: pd.DataFrame,
    *,
    hue: str = "frontend",
    cues: Sequence[str] | None = None,
    n_boot: int = 1000,
    ncols: int = 3,
):
    """Probe R² by band, one panel per cue, one series per ``hue`` value, with CI error bars.

    ``probes`` is :func:`analysis.runs.load_probe_tables` output. Identical rows from several
    runs (a front-end probed at its random init gives the same table in every run) are counted
    once; distinct rows of one series are averaged with a bootstrap CI over them.
    """
    require_columns(probes, [hue, "band", "lo_hz", "cue", "r2"], "the probe table")
    if probes.empty:
        return note_figure(
            "No probe tables yet: evaluate runs with probes=True (eval/probe_r2.json).", "probe R²"
        ), pd.DataFrame()
    frame = _fill_missing(probes, hue).drop_duplicates([hue, "band", "cue", "r2"])
    cues = list(cues) if cues is not None else list(dict.fromkeys(frame["cue"]))
    unknown = sorted(set(cues) - set(frame["cue"]))
    if unknown:
        raise AnalysisError(
            f"cues {unknown} are not in the probe table; cues present: {sorted(frame['cue'].unique())}"
        )
    frame = frame[frame["cue"].isin(cues)]
    table = _aggregate_keep_own_ci(frame, [hue, "band", "lo_hz", "cue"], "r2", n_boot=n_boot)
    order = band_order(frame)
    series = list(dict.fromkeys(table[hue]))

    plt, sns = _plt()
    palette = dict(zip(series, sns.color_palette("colorblind", len(series))))
    fig, axes = _grid(len(cues), ncols, (0.55 * len(order) + 2.2, 3.0))
    offsets = np.linspace(-0.3, 0.3, len(series)) if len(series) > 1 else np.zeros(1)
    for ax, cue in zip(axes, cues):
        for offset, name in zip(offsets, series):
            part = (
                table[(table["cue"] == cue) & (table[hue] == name)]
                .set_index("band")
                .reindex(order)
                .reset_index()
            )
            x = np.arange(len(order)) + offset
            ax.errorbar(
                x,
                part["mean"],
                yerr=_yerr(part),
                fmt="o",
                ms=4,
                capsize=2,
                color=palette[name],
                label=name,
            )
        ax.axhline(0.0, color="0.4", lw=0.8)
        ax.set_xticks(np.arange(len(order)), order, rotation=45, ha="right")
        ax.set_title(cue)
        ax.set_ylabel("held-out R²")
    axes[0].legend(title=hue, fontsize=7, title_fontsize=8)
    fig.tight_layout()
    return fig, table


# -- spectral scales ----------------------------------------------------------------------------
def metric_vs_levels(
    runs: pd.DataFrame,
    metrics: Sequence[str],
    *,
    x: str = "levels",
    hue: str = "wavelet",
    reference: str = "config",
    n_boot: int = 1000,
    ncols: int = 3,
):
    """Each metric against the MSM DWT levels (``x``), one line per wavelet (``hue``), mean and
    bootstrap CI over seeds. Runs without a value of ``x`` (mel, raw) are references: a
    horizontal line at their mean with a band over their CI, one per ``reference`` value.
    """
    require_columns(runs, [x, hue, reference], "the runs frame")
    long = metrics_long(
        runs, metrics, id_columns=list(dict.fromkeys([*ID_COLUMNS, x, hue, reference]))
    )
    scaled = long[long[x].notna()]
    refs = long[long[x].isna()]
    curves = aggregate(scaled, ["metric", hue, x], n_boot=n_boot).assign(role="scale")
    bands = aggregate(refs, ["metric", reference], n_boot=n_boot).assign(role="reference")
    table = pd.concat([curves, bands], ignore_index=True)
    if table.empty:
        return note_figure(
            f"No run has a value for {list(metrics)}.", "metrics vs MSM levels"
        ), table

    plt, sns = _plt()
    hues = list(dict.fromkeys(curves[hue])) if not curves.empty else []
    ref_names = list(dict.fromkeys(bands[reference])) if not bands.empty else []
    colors = dict(zip(hues, sns.color_palette("colorblind", len(hues))))
    ref_colors = dict(zip(ref_names, sns.color_palette("Greys", len(ref_names) + 2)[2:]))
    fig, axes = _grid(len(metrics), ncols, (4.0, 3.0))
    levels = sorted(curves[x].unique()) if not curves.empty else []
    for ax, metric in zip(axes, metrics):
        for name in hues:
            part = curves[(curves["metric"] == metric) & (curves[hue] == name)].sort_values(x)
            if not part.empty:
                ax.errorbar(
                    part[x],
                    part["mean"],
                    yerr=_yerr(part),
                    marker="o",
                    ms=4,
                    capsize=3,
                    color=colors[name],
                    label=f"{hue}={name}",
                )
        for name in ref_names:
            ref = bands[(bands["metric"] == metric) & (bands[reference] == name)]
            if ref.empty:
                continue
            row = ref.iloc[0]
            ax.axhline(
                row["mean"], color=ref_colors[name], ls="--", lw=1.2, label=f"{name} (reference)"
            )
            if np.isfinite(row["ci_lo"]) and row["ci_hi"] > row["ci_lo"]:
                ax.axhspan(row["ci_lo"], row["ci_hi"], color=ref_colors[name], alpha=0.15, lw=0)
        if levels:
            ax.set_xticks(levels, [f"{v:g}" for v in levels])
        ax.set_xlabel("MSM DWT levels")
        ax.set_title(metric)
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        axes[0].legend(handles.values(), handles.keys(), fontsize=7)
    fig.tight_layout()
    return fig, table


# -- comparing runs -----------------------------------------------------------------------------
def compare_table(
    runs: pd.DataFrame,
    by: Sequence[str],
    metrics: Sequence[str] | None = None,
    *,
    n_boot: int = 1000,
) -> pd.DataFrame:
    """Every metric of every group of ``by`` (e.g. model, frontend, data_kind): ``mean`` and a
    bootstrap CI over the group's runs (seeds), ``n`` runs. Long: one row per group × metric."""
    by = list(by)
    require_columns(runs, by, "the runs frame")
    long = metrics_long(runs, metrics, id_columns=list(dict.fromkeys([*ID_COLUMNS, *by])))
    long[by] = (
        long[by].astype(object).where(long[by].notna(), "–")
    )  # a missing key is a group of its own
    return aggregate(long, [*by, "metric"], n_boot=n_boot)


def compare_wide(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """:func:`compare_table` as one row per group and one ``mean [lo, hi]`` column per metric."""
    by = list(by)
    require_columns(table, [*by, "metric", "mean", "ci_lo", "ci_hi", "n"], "the comparison table")
    cells = table.assign(
        cell=[
            format_ci(m, lo, hi) for m, lo, hi in zip(table["mean"], table["ci_lo"], table["ci_hi"])
        ]
    )
    wide = cells.pivot_table(index=by, columns="metric", values="cell", aggfunc="first")
    runs = table.groupby(by, sort=False)["n"].max().rename("runs")
    return wide.join(runs).reset_index()


def compare_plot(table: pd.DataFrame, by: Sequence[str], *, ncols: int = 3):
    """One panel per metric: each group's mean with its CI as a horizontal error bar."""
    by = list(by)
    require_columns(table, [*by, "metric", "mean", "ci_lo", "ci_hi"], "the comparison table")
    if table.empty:
        return note_figure("No metrics to compare.", "comparison")
    labels = table[by].astype(str).agg(" / ".join, axis=1)
    table = table.assign(group=labels)
    groups = list(dict.fromkeys(table["group"]))
    metrics = list(dict.fromkeys(table["metric"]))
    plt, sns = _plt()
    colors = dict(zip(groups, sns.color_palette("colorblind", len(groups))))
    fig, axes = _grid(len(metrics), ncols, (4.2, 0.9 + 0.3 * len(groups)))
    for ax, metric in zip(axes, metrics):
        part = table[table["metric"] == metric].set_index("group").reindex(groups).reset_index()
        y = np.arange(len(groups))
        for i, row in part.iterrows():
            ax.errorbar(
                row["mean"],
                y[i],
                xerr=_yerr(part.iloc[[i]]),
                fmt="o",
                ms=4,
                capsize=3,
                color=colors[row["group"]],
            )
        ax.set_yticks(y, groups)
        ax.invert_yaxis()
        ax.set_title(metric)
    for ax in axes[1:]:
        if ax.get_subplotspec().colspan.start != 0:  # group labels only on the first column
            ax.set_yticklabels([])
    fig.supylabel(" / ".join(by), fontsize=9)
    fig.tight_layout()
    return fig
