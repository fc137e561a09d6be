"""What a sweep ends with: its trials table and summary, and a verdict when it compares.

Every sweep ends with ``trials.csv`` and ``trials.md`` (one row per trial: params, state, the
objective and each seed's value, MLflow runs, why it failed), logged to the MLflow parent run
with the best trial (or the Pareto front), and a summary on the console.

A sweep whose file has a ``compare`` section also ends with:

- **The verdict.** For every configuration (arm) and every compared metric (e.g.
  ``audio_effect/mouth_open``, per held-out speaker, from each trial's evaluation), the arm's
  own value and its **paired difference** from the reference arm (e.g. ``mel``): paired by
  training seed and by speaker (same clips, same noise), two-stage bootstrap over seeds and
  speakers (``singer.evaluation.units.paired_difference``). "resolved" only when the interval
  excludes 0, else "tie". Written as ``verdict.md`` / ``verdict.json``, printed, and put into the
  MLflow parent run's description, where the MLflow UI shows it first.
- **Plots** (PNG, under ``<out>/report/`` and the parent run's ``report/``): each metric against
  the ``compare.plot`` params (e.g. levels × wavelet) with CIs and the reference as a band; the
  band-sensitivity heatmaps of the best arm and of the reference (``compare.bands``).
- **Videos**: one sample mp4 per arm (first seed), generated beside its ground truth with
  sound, logged under the parent run's ``samples/``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from singer.evaluation import evaluate_checkpoint, load_protocol
from singer.evaluation.units import Interval, paired_difference
from singer.sweeps.jobs import failure_reason
from singer.sweeps.spec import VARIANT_PARAM, SweepSpec
from singer.sweeps.state import SweepState, trial_seed_dir
from singer.sweeps.study import SweepStudy

REPORT_DIR = "report"


@dataclass
class Arm:
    """One configuration of the sweep: its label, params, and per seed its trial directory and
    evaluation (``metrics.json`` as a dict, or None when the seed did not finish)."""

    label: str
    trial: int
    params: dict
    trial_dirs: dict[int, Path]
    evals: dict[int, dict | None]

    def units(self, key: str) -> dict[int, dict[str, float]]:
        """``{seed: {unit: value}}`` of one metric key (finite values only)."""
        out = {}
        for seed, data in self.evals.items():
            values = ((data or {}).get("units") or {}).get(key) or {}
            out[seed] = {u: float(v) for u, v in values.items() if v is not None and np.isfinite(v)}
        return {s: v for s, v in out.items() if v}


def read_eval(trial_dir: Path) -> dict | None:
    """The newest evaluation ``metrics.json`` of a trial directory (None if there is none)."""
    found = sorted((trial_dir / "eval").glob("*/metrics.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        return None
    try:
        return json.loads(found[-1].read_text())
    except (OSError, json.JSONDecodeError):
        return None


def arm_label(variant: str, params: dict) -> str:
    if variant:
        return variant
    return " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in params.items()) or "base"


@dataclass
class VerdictRow:
    metric: str
    arm: str
    value: Interval
    difference: Interval | None  # None for the reference itself
    seed_sd: float
    seeds: int

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "arm": self.arm,
            "value": self.value.to_dict(),
            "difference": None if self.difference is None else self.difference.to_dict(),
            "seed_sd": None if not np.isfinite(self.seed_sd) else self.seed_sd,
            "seeds": self.seeds,
        }


def verdict(
    arms: list[Arm], reference: str, metrics: list[str], *, n_boot: int = 2000
) -> list[VerdictRow]:
    """Rows per metric × arm: the arm's value (seeds × speakers) and its paired difference
    from the reference arm."""
    by_label = {arm.label: arm for arm in arms}
    ref = by_label.get(reference)
    rows = []
    for metric in metrics:
        ref_units = ref.units(metric) if ref is not None else {}
        for arm in arms:
            units = arm.units(metric)
            zero = {s: {u: 0.0 for u in v} for s, v in units.items()}
            value, spread = paired_difference(units, zero, n_boot=n_boot)
            difference = None
            if arm.label != reference and ref is not None:
                difference, spread = paired_difference(units, ref_units, n_boot=n_boot)
            rows.append(VerdictRow(metric, arm.label, value, difference, spread, len(units)))
    return rows


def headline(rows: list[VerdictRow], reference: str) -> str:
    """One paragraph that answers first: does the audio drive the motion in every arm (the
    first metric's own value), and which differences from the reference are resolved."""
    if not rows:
        return "No arm finished: no verdict."
    first = rows[0].metric
    own = [r for r in rows if r.metric == first]
    positive = [r for r in own if r.value.resolved and r.value.estimate > 0]
    units = max((r.value.n for r in own), default=0)
    seeds = max((r.seeds for r in own), default=0)
    compared = [r for r in rows if r.difference is not None and r.difference.n >= 2]
    resolved = [r for r in compared if r.difference.resolved]
    text = (
        f"**Answer** ({units} held-out speakers, {seeds} seeds): `{first}` is resolved above 0 in "
        f"{len(positive)} of {len(own)} arms. Against **{reference}**, {len(resolved)} of "
        f"{len(compared)} differences are resolved (about {0.05 * len(compared):.1f} would be by "
        "chance alone)"
    )
    if resolved:
        text += ": " + "; ".join(
            f"{r.arm} on `{r.metric}` {r.difference.estimate:+.3f}" for r in resolved
        )
    return text + "."


def verdict_markdown(rows: list[VerdictRow], reference: str, *, title: str = "") -> str:
    """The verdict as Markdown: a headline, then one table per metric."""
    lines = [f"## {title}" if title else "## Verdict", "", headline(rows, reference), ""]
    lines.append(
        f"Each arm against **{reference}**, paired by training seed and held-out speaker "
        "(same clips, same noise); 95 % intervals from a two-stage bootstrap over seeds and "
        "speakers. *resolved* = the interval of the difference excludes 0; *tie* otherwise. "
        "*seed SD*: the spread over training seeds of the difference (of the value, for the "
        "reference)."
    )
    compared = sum(r.difference is not None and r.difference.n >= 2 for r in rows)
    if compared:
        lines += [
            "",
            f"{compared} comparisons: at 95 % about {0.05 * compared:.1f} of them would come out "
            "*resolved* by chance alone if no arm differed from the reference. Read an isolated "
            "small resolved difference with that in mind.",
        ]
    for metric in dict.fromkeys(r.metric for r in rows):
        lines += [
            "",
            f"### `{metric}`",
            "",
            f"| arm | value | − {reference} | verdict | seed SD |",
            "|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r.metric == metric):
            diff = "(reference)" if r.difference is None else r.difference.format(3)
            verdict_text = "" if r.difference is None else r.difference.verdict
            sd = f"{r.seed_sd:.3f}" if np.isfinite(r.seed_sd) else "–"
            lines.append(f"| {r.arm} | {r.value.format(3)} | {diff} | {verdict_text} | {sd} |")
    return "\n".join(lines) + "\n"


def plot_against_params(
    rows: list[VerdictRow],
    arms: list[Arm],
    reference: str,
    x: str,
    hue: str | None,
    path: Path,
) -> Path:
    """Each metric (one panel): every arm's paired difference from the reference against param
    ``x`` (one line per ``hue``), with its interval; 0 = no difference. The reference's own
    value is in the panel title."""
    # lazy: start-up: matplotlib takes seconds, and only a compared sweep plots
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: start-up (as above), after the backend is chosen

    params = {arm.label: arm.params for arm in arms}
    metrics = list(dict.fromkeys(r.metric for r in rows))
    cols = min(3, len(metrics))
    nrows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        mine = [r for r in rows if r.metric == metric]
        ref = next((r for r in mine if r.arm == reference), None)
        groups: dict[str, list[VerdictRow]] = {}
        for r in mine:
            p = params.get(r.arm, {})
            if r.difference is not None and x in p:
                groups.setdefault(str(p.get(hue, "")) if hue else "", []).append(r)
        xs_all = set()
        for offset, (name, group) in enumerate(sorted(groups.items())):
            group.sort(key=lambda r: float(params[r.arm][x]))
            base = np.asarray([float(params[r.arm][x]) for r in group])
            xs_all.update(base.tolist())
            xs = base + 0.08 * (offset - (len(groups) - 1) / 2)
            ys = np.asarray([r.difference.estimate for r in group])
            lo = np.asarray([r.difference.lo for r in group])
            hi = np.asarray([r.difference.hi for r in group])
            err = np.vstack(
                [np.where(np.isfinite(lo), ys - lo, 0), np.where(np.isfinite(hi), hi - ys, 0)]
            )
            label = f"{hue.rsplit('.', 1)[-1]}={name}" if hue else None
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
        ax.axhline(0.0, color="grey", lw=1)
        ax.set_xticks(sorted(xs_all))
        reference_text = f"{reference} = {ref.value.format(2)}" if ref is not None else reference
        ax.set_title(f"{metric} − {reference}\n({reference_text})", fontsize=8)
        ax.set_xlabel(x.rsplit(".", 1)[-1])
        if groups and hue:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"paired difference from {reference} (same held-out speakers, noise and seeds); "
        "95 % CI over seeds × speakers",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_arms(rows: list[VerdictRow], path: Path) -> Path:
    """Without ``compare.plot``: each metric as bars over the arms, with intervals."""
    # lazy: start-up: matplotlib takes seconds, and only a compared sweep plots
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: start-up (as above), after the backend is chosen

    metrics = list(dict.fromkeys(r.metric for r in rows))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 2.4 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        mine = [r for r in rows if r.metric == metric]
        ys = np.asarray([r.value.estimate for r in mine])
        lo = np.asarray([r.value.lo for r in mine])
        hi = np.asarray([r.value.hi for r in mine])
        err = np.vstack(
            [np.where(np.isfinite(lo), ys - lo, 0), np.where(np.isfinite(hi), hi - ys, 0)]
        )
        ax.bar(range(len(mine)), ys, yerr=err, capsize=3, color="tab:blue", alpha=0.7)
        ax.set_xticks(range(len(mine)), [r.arm for r in mine], rotation=30, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.axhline(0.0, color="black", lw=0.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _bands_for(arm: Arm, evaluate: dict, out_dir: Path) -> Path | None:
    """The band ablation of an arm's first-seed checkpoint (no audio controls: only the bands
    are wanted here); returns the heatmap PNG."""
    seed = min(arm.trial_dirs)
    protocol = load_protocol(overrides=[*evaluate["protocol"], "controls=[]"])
    result = evaluate_checkpoint(
        arm.trial_dirs[seed],
        protocol=protocol,
        split=evaluate["split"],
        bands=True,
        out_dir=out_dir,
        log_mlflow=False,
        progress=False,
    )
    png = out_dir / "band_sensitivity.png"
    return png if result.bands is not None and png.exists() else None


def _sample(arm: Arm) -> Path | None:
    """The newest sample video of the arm's first seed (generated beside its ground truth)."""
    seed = min(arm.trial_dirs)
    found = sorted((arm.trial_dirs[seed] / "samples").glob("*.mp4"))
    return found[-1] if found else None


# -- a sweep that compares: the report ------------------------------------------------------
def compare_report(spec: SweepSpec, study: SweepStudy, parent, out_dir: Path, log) -> dict | None:
    """The ``compare`` section's verdict, plots and videos (None for a sweep without one).

    Nothing here can fail the sweep: a problem is logged (None) and the trials table stands.
    """
    if spec.compare is None:
        return None
    try:
        return build_report(
            arms=completed_arms(spec, study.trials(), out_dir),
            compare=spec.compare,
            evaluate=spec.evaluate,
            best=best_trials(spec, study),
            out_dir=out_dir / REPORT_DIR,
            parent=parent,
            title=f"{spec.name}: {spec.description or 'verdict'}",
            log=log,
        )
    except Exception as err:  # noqa: BLE001 - the sweep itself finished
        log(f"[yellow]could not build the report: {escape(failure_reason(err))}[/]")
        return None


def completed_arms(spec: SweepSpec, trials: list, out_dir: Path) -> list[Arm]:
    """One arm per completed trial, with each seed's evaluation."""
    found = []
    for t in trials:
        if t.state.name != "COMPLETE":
            continue
        params = {k: v for k, v in t.params.items() if k != VARIANT_PARAM}
        dirs = {s: trial_seed_dir(out_dir, t.number, s) for s in spec.seeds}
        found.append(
            Arm(
                arm_label(t.user_attrs.get("variant") or "", params),
                t.number,
                params,
                dirs,
                {s: read_eval(d) for s, d in dirs.items()},
            )
        )
    return found


def build_report(
    *,
    arms: list[Arm],
    compare: dict,
    evaluate: dict,
    best: list[dict],
    out_dir: Path,
    parent,
    title: str,
    log,
) -> dict:
    """Write and log everything (see the module docstring); returns what to print."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = compare["reference"]
    rows = verdict(arms, reference, compare["metrics"])
    markdown = verdict_markdown(rows, reference, title=title)
    (out_dir / "verdict.md").write_text(markdown)
    (out_dir / "verdict.json").write_text(
        json.dumps({"reference": reference, "rows": [r.to_dict() for r in rows]}, indent=2) + "\n"
    )
    files = [out_dir / "verdict.md", out_dir / "verdict.json"]
    plot = compare.get("plot")
    if plot:
        files.append(
            plot_against_params(
                rows, arms, reference, plot["x"], plot.get("hue"), out_dir / "metrics_vs_params.png"
            )
        )
    else:
        files.append(plot_arms(rows, out_dir / "metrics_by_arm.png"))

    best_label = None
    if best:
        by_trial = {arm.trial: arm for arm in arms}
        best_arm = by_trial.get(best[0]["trial"])
        best_label = best_arm.label if best_arm else None
    heatmaps = {}
    if compare.get("bands"):
        wanted = [label for label in (best_label, reference) if label]
        for arm in (a for a in arms if a.label in dict.fromkeys(wanted)):
            log(f"band ablation of {arm.label} (seed {min(arm.trial_dirs)}) ...")
            png = _bands_for(arm, evaluate, out_dir / "bands" / arm.label.replace(" ", "_"))
            if png is not None:
                heatmaps[arm.label] = png
                files.append(png)

    samples = {arm.label: _sample(arm) for arm in arms}
    try:
        for path in files:
            artifact = (
                REPORT_DIR
                if path.parent == out_dir
                else f"{REPORT_DIR}/{path.parent.relative_to(out_dir)}"
            )
            parent.log_artifact(path, artifact)
        for label, path in samples.items():
            if path is not None:
                named = out_dir / "samples" / f"{label.replace(' ', '_')}.mp4"
                named.parent.mkdir(parents=True, exist_ok=True)
                named.write_bytes(path.read_bytes())
                parent.log_artifact(named, "samples")
        note = markdown + (
            "\nPlots: *Artifacts → report*; a sample video per arm (generated | ground truth, "
            "with sound): *Artifacts → samples*.\n"
        )
        parent.set_tags({"mlflow.note.content": note, "sweep.verdict": "report/verdict.md"})
    except Exception as err:  # noqa: BLE001 - the files are on disk either way
        log(f"could not log the report to MLflow: {err}")
    return {
        "rows": rows,
        "reference": reference,
        "best": best_label,
        "files": files,
        "heatmaps": heatmaps,
        "out_dir": out_dir,
    }


def console_lines(report: dict) -> list[str]:
    """The verdict for the terminal (rich markup): per metric, each arm and its difference."""
    rows, reference = report["rows"], report["reference"]
    lines = [
        f"[bold]verdict[/] (each arm − {escape(reference)}, paired by seed and held-out speaker; "
        "resolved = 95 % CI excludes 0):"
    ]
    width = max((len(r.arm) for r in rows), default=8)
    for metric in dict.fromkeys(r.metric for r in rows):
        lines.append(f"  [bold]{escape(metric)}[/]")
        for r in (r for r in rows if r.metric == metric):
            if r.difference is None:
                lines.append(f"    {escape(r.arm.ljust(width))}  {r.value.format(3)}  (reference)")
                continue
            colour = "green" if r.difference.resolved else "white"
            lines.append(
                f"    {escape(r.arm.ljust(width))}  {r.value.format(3)}   − {escape(reference)}: "
                f"[{colour}]{r.difference.format(3)} {r.difference.verdict}[/]"
            )
    compared = sum(r.difference is not None and r.difference.n >= 2 for r in rows)
    resolved = sum(r.difference is not None and r.difference.resolved for r in rows)
    lines.append(
        f"  {resolved} of {compared} differences resolved; about {0.05 * compared:.1f} would be by "
        "chance alone if no arm differed from the reference"
    )
    if report.get("best"):
        lines.append(f"  best by the sweep objective: {escape(report['best'])}")
    lines.append(f"  report: {report['out_dir']} (verdict.md, plots, band heatmaps, samples/)")
    return lines


# -- every sweep: the trials table and the summary -------------------------------------------
@dataclass
class SweepSummary:
    """Where a sweep recorded everything, and how its trials ended."""

    name: str
    out_dir: Path
    storage: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    counts: dict[str, int]
    best: list[dict]  # best trial (single objective) or the Pareto front
    summary_csv: Path


def summarize(
    spec: SweepSpec, study: SweepStudy, state: SweepState, parent, counts: dict[str, int], log
) -> SweepSummary:
    """Write the trials table and log it, with the best trial(s), to the MLflow parent run."""
    columns, rows = trial_rows(spec, study.trials())
    csv_path, md_path = state.out_dir / "trials.csv", state.out_dir / "trials.md"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    csv_path.write_text(buffer.getvalue())
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    md_path.write_text(f"# Sweep {spec.name}\n\n" + "\n".join(md) + "\n")
    best = best_trials(spec, study)
    try:
        parent.log_artifact(csv_path, "summary")
        parent.log_artifact(md_path, "summary")
        parent.log_metrics({f"trials/{k}": v for k, v in counts.items()})
        if best and not spec.multi_objective:
            b = best[0]
            parent.log_params({f"best.{k}": v for k, v in b["params"].items()})
            parent.log_metrics({f"best/{k}": v for k, v in b["values"].items()})
            parent.set_tags(
                {
                    "best.trial": b["trial"],
                    "best.variant": b["variant"] or "search",
                    "best.overrides": " ".join(b["overrides"]),
                }
            )
        elif best:
            parent.set_tags({"pareto.trials": " ".join(str(b["trial"]) for b in best)})
    except Exception as err:  # the summary files are on disk either way
        log(f"[yellow]could not log the summary to MLflow: {escape(str(err))}[/]")
    return SweepSummary(
        spec.name,
        state.out_dir,
        state["storage"],
        state["tracking_uri"],
        spec.experiment,
        state["parent_run_id"],
        counts,
        best,
        csv_path,
    )


def trial_rows(spec: SweepSpec, trials: list) -> tuple[list[str], list[dict]]:
    """One row per trial: params, state, objective (mean) and per-seed values, runs, errors."""
    metrics = [o.metric for o in spec.objectives]
    columns = ["trial", "state", "variant", *[p.key for p in spec.space], *metrics]
    columns += [f"{m} [seed {s}]" for m in metrics for s in spec.seeds]
    columns += ["seconds", "mlflow_runs", "fail_reason", "overrides"]
    rows = []
    for t in trials:
        if t.state.name == "WAITING":
            continue
        row: dict[str, Any] = {
            "trial": t.number,
            "state": t.state.name,
            "variant": t.user_attrs.get("variant") or "",
        }
        for p in spec.space:
            row[p.key] = t.params.get(p.key, "")
        values = t.values or []
        for m, v in zip(metrics, values if t.state.name == "COMPLETE" else []):
            row[m] = v
        runs = []
        for s in spec.seeds:
            result = t.user_attrs.get(f"result.seed{s}") or {}
            for m in metrics:
                row[f"{m} [seed {s}]"] = (result.get("values") or {}).get(m, "")
            if result.get("run_id"):
                runs.append(result["run_id"])
        row["seconds"] = round(t.duration.total_seconds(), 1) if t.duration else ""
        row["mlflow_runs"] = " ".join(runs)
        row["fail_reason"] = t.user_attrs.get("fail_reason", "")
        row["overrides"] = " ".join(t.user_attrs.get("overrides", []))
        rows.append(row)
    return columns, rows


def best_trials(spec: SweepSpec, study: SweepStudy) -> list[dict]:
    """The best trial, or the Pareto front: number, variant, params, objective values, overrides."""
    return [
        {
            "trial": t.number,
            "variant": t.user_attrs.get("variant") or "",
            "params": dict(t.params),
            "values": dict(zip([o.metric for o in spec.objectives], t.values)),
            "overrides": t.user_attrs.get("overrides", []),
        }
        for t in study.best()
    ]


def summary_lines(summary: SweepSummary, experiment_id: str | None) -> list[str]:
    """How the sweep ended and where to look (rich markup)."""
    c = summary.counts
    lines = [
        f"[bold]sweep {summary.name} finished[/]: {c['done']} done, {c['pruned']} pruned, {c['failed']} failed; "
        f"table {summary.summary_csv}"
    ]
    if not summary.best:
        lines.append("[yellow]no trial completed[/]")
    for b in summary.best:
        label = "Pareto-optimal" if len(b["values"]) > 1 else "best"
        values = ", ".join(f"{k}={v:.4g}" for k, v in b["values"].items())
        params = ", ".join(f"{k}={v}" for k, v in b["params"].items())
        lines.append(
            f"[green]{label}: trial {b['trial']}[/] ({escape(b['variant'] or 'search space')}): {values}"
        )
        lines.append(f"  params: {escape(params)}")
        lines.append(f"  overrides: {escape(' '.join(b['overrides']) or '(the base overrides)')}")
    uri = summary.tracking_uri
    lines.append(
        f"MLflow: {uri}  experiment {summary.experiment!r}, parent run {summary.parent_run_id}"
    )
    lines.append(f"  open the UI: {_ui_hint(uri)}")
    lines.append(
        f"  the answer: {_ui_base(uri)}/#/experiments/{experiment_id}"
        f"/runs/{summary.parent_run_id}?workflowType=machine_learning (the parent run; its "
        "description holds the verdict)"
    )
    lines.append(f"Optuna study {summary.name!r}: {summary.storage}")
    return lines


def _cell(value: Any) -> str:
    """A markdown table cell."""
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")


def _ui_hint(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def _ui_base(uri: str) -> str:
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
