"""Representation probes: how linearly do a front-end's per-frame tokens encode each facial cue?

For every window with ground truth, the front-end turns the waveform ``B×S`` into tokens
``B×F×N×D``; each frame's ``N·D`` token values are one feature row and its ``K`` cues the
targets. A ridge regression (``sklearn.linear_model.Ridge`` on standardised features) is scored
by **grouped K-fold** cross-validation with **speakers** as the groups (a clip's ``speaker_id``;
its source video when none is known): frames of one speaker never sit on both sides, so a probe
cannot score by recognising a voice or memorising a clip. The ridge strength is chosen per cue
from ``probe_alphas`` by an inner grouped K-fold (:data:`INNER_FOLDS`) of the training speakers
only, for the same reason.

What is measured: every frame gets an out-of-fold prediction from a probe fitted on other
speakers, and the score is the held-out R², ``1 − SSE / SST`` over all probed frames (SST
around the mean of all of them). Its interval is a cluster bootstrap over **speakers** (the
independent units), never over folds, whose scores share training data. By default
(``probe_split: val``) the probed clips are the checkpoint's held-out speakers, so a trained
front-end is probed on voices its training never heard; with ``probe_split: train`` or ``all``
the table says how well the front-end encodes the cues on (partly) *trained* data.

The same probe runs on band-passed audio (each band of ``band_edges`` alone), which shows where
in the spectrum a front-end finds each cue, independently of any generator.

Front-ends that gate on the noisy sample (``msm``) are probed with ``x_t=None, t=None``: the
audio-only path (their gains come from their biases alone).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files

import numpy as np
import torch
from omegaconf import OmegaConf
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from singer.config import CONFIG_MODULE
from singer.data.dataset import face_cue_names
from singer.evaluation.bands import band_label, bandpass
from singer.evaluation.inputs import load_probe_batches
from singer.evaluation.protocol import EvalProtocol
from singer.registry import FRONTENDS

TABLE_COLUMNS = ("frontend", "band", "lo_hz", "hi_hz", "cue", "r2", "ci_lo", "ci_hi", "n")
FULL_BAND = "full"
MIN_TARGET_VARIANCE = 1e-10  # below this a cue is constant and R² is undefined
INNER_FOLDS = 3  # grouped folds (inside each training fold) that choose the ridge strength


class ProbeError(ValueError):
    """Probing is impossible with the given data (too few clips, no ground truth)."""


@dataclass
class ProbeData:
    """Frame-level probe inputs: features ``N×P``, targets ``N×K``, groups ``N`` (speakers)."""

    features: np.ndarray
    targets: np.ndarray
    groups: np.ndarray


def grouped_folds(groups: np.ndarray, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train_idx, test_idx)`` for GroupKFold with ``min(folds, #groups)`` splits."""
    # lazy: start-up: scikit-learn takes seconds to import, and the evaluation package loads
    # this module whether or not anything is probed
    from sklearn.model_selection import GroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ProbeError(
            f"probes need frames from at least 2 speakers for grouped cross-validation, got "
            f"{n_groups}: hold out more speakers (data.val_fraction, more clips) or probe "
            "another split (evaluate protocol probe_split)"
        )
    splitter = GroupKFold(n_splits=min(folds, n_groups))
    return list(splitter.split(np.zeros(len(groups)), groups=groups))


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets scaled by the training set's mean and standard deviation (constant columns: 1)."""
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return (x_train - mean) / std, (x_test - mean) / std


def ridge_path(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alphas: Sequence[float]
) -> np.ndarray:
    """Ridge predictions for every strength at once: ``A × n_test × K``.

    Features are standardised on the training set; the intercept is the training mean of each
    target (unpenalised); ``alpha`` weighs ``||w||²`` against the summed squared error, as in
    ``sklearn.linear_model.Ridge``. One thin SVD of the training features serves every alpha
    and every target.
    """
    xs_train, xs_test = _standardise(x_train, x_test)
    y_mean = y_train.mean(axis=0)
    u, s, vt = np.linalg.svd(xs_train, full_matrices=False)
    uty = u.T @ (y_train - y_mean)  # r × K
    projected = xs_test @ vt.T  # n_test × r
    out = np.empty((len(alphas), len(x_test), y_train.shape[1]))
    for a, alpha in enumerate(alphas):
        shrink = s / (s**2 + float(alpha))
        out[a] = projected @ (shrink[:, None] * uty) + y_mean
    return out


def select_alpha(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    alphas: Sequence[float],
    folds: int = INNER_FOLDS,
) -> np.ndarray:
    """Per target, the index into ``alphas`` with the least squared error over an inner grouped
    K-fold of the training frames (``K`` indices). With fewer than 2 clips there is nothing to
    cross-validate: the middle of the grid."""
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        return np.full(y.shape[1], len(alphas) // 2)
    sse = np.zeros((len(alphas), y.shape[1]))
    for train, test in grouped_folds(groups, min(folds, n_groups)):
        pred = ridge_path(x[train], y[train], x[test], alphas)
        sse += ((pred - y[test][None]) ** 2).sum(axis=1)
    return sse.argmin(axis=0)


def _prepare(features, targets, groups):
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    groups = np.asarray(groups)
    if not (len(x) == len(y) == len(groups)):
        raise ValueError(
            f"features, targets and groups must have the same length, "
            f"got {len(x)}, {len(y)}, {len(groups)}"
        )
    return x, y, groups


def out_of_fold_predictions(
    features: np.ndarray,
    targets: np.ndarray,
    groups: Sequence | np.ndarray,
    *,
    folds: int = 5,
    alphas: Sequence[float] = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4),
    inner_folds: int = INNER_FOLDS,
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """``(pred N×K, outer folds)``: every frame predicted by a probe fitted on other groups.

    features ``N×P``, targets ``N×K`` (or ``N``), groups ``N``: frames with the same group never
    span a training and a test fold, neither in the outer folds nor in the inner folds that
    choose each target's ridge strength. Frames with non-finite features, and targets without
    a value, get NaN.

    The fitted model is ``sklearn.linear_model.Ridge`` on ``StandardScaler`` features;
    :func:`ridge_path` (the same estimator in closed form) only chooses its strength. The
    matrices are small (frames × token values), so BLAS runs single-threaded here: contended
    BLAS threads on a busy CPU are many times slower.
    """
    x, y, groups = _prepare(features, targets, groups)
    pred = np.full(y.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(x).all(axis=1))
    splits = grouped_folds(groups[finite], folds)
    with threadpool_limits(limits=1, user_api="blas"):
        fitted = _fit_predict(x[finite], y[finite], groups[finite], splits, alphas, inner_folds)
    pred[finite] = fitted
    return pred, [(finite[train], finite[test]) for train, test in splits]


def ridge_probe(
    features: np.ndarray,
    targets: np.ndarray,
    groups: Sequence | np.ndarray,
    *,
    folds: int = 5,
    alphas: Sequence[float] = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4),
    inner_folds: int = INNER_FOLDS,
) -> np.ndarray:
    """Held-out R² per fold and target: ``folds' × K`` (NaN for a target without variance).

    The R² of fold ``f`` is ``1 − MSE_f / Var(y)`` with ``Var(y)`` over *all* probed frames: a
    held-out group whose cue barely moves would otherwise divide by almost nothing. For the
    reported score and its interval see :func:`unit_r2` (fold scores are not independent).
    """
    _, y, _ = _prepare(features, targets, groups)
    pred, splits = out_of_fold_predictions(
        features, targets, groups, folds=folds, alphas=alphas, inner_folds=inner_folds
    )
    scores = np.full((len(splits), y.shape[1]), np.nan)
    for k in range(y.shape[1]):
        rows = np.isfinite(y[:, k]) & np.isfinite(pred[:, k])
        variance = np.var(y[rows, k]) if rows.sum() > 1 else 0.0
        if variance <= MIN_TARGET_VARIANCE:
            continue
        for f, (_, test) in enumerate(splits):
            test = test[rows[test]]
            if len(test):
                scores[f, k] = 1.0 - ((pred[test, k] - y[test, k]) ** 2).mean() / variance
    return scores


def unit_r2(
    targets: np.ndarray,
    predictions: Sequence[np.ndarray],
    units: Sequence,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> list[tuple[float, float, float, int]]:
    """Per target ``(R², lo, hi, number of units)`` from out-of-fold ``predictions`` (one ``N×K``
    array per seed): ``1 − SSE/SST`` over all frames, averaged over seeds; the interval is a
    cluster bootstrap that resamples units (speakers) with replacement."""
    y = np.asarray(targets, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    units = np.asarray(units)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(y.shape[1]):
        rows = np.isfinite(y[:, k]) & np.all([np.isfinite(p[:, k]) for p in predictions], axis=0)
        yk = y[rows, k]
        if len(yk) < 2 or np.var(yk) <= MIN_TARGET_VARIANCE:
            out.append((float("nan"), float("nan"), float("nan"), 0))
            continue
        names, index = np.unique(units[rows], return_inverse=True)
        sst = np.bincount(index, weights=(yk - yk.mean()) ** 2, minlength=len(names))
        sse = np.stack(
            [
                np.bincount(index, weights=(p[rows, k] - yk) ** 2, minlength=len(names))
                for p in predictions
            ]
        )  # seeds × units
        estimate = float(np.mean(1.0 - sse.sum(axis=1) / sst.sum()))
        if len(names) < 2:
            out.append((estimate, float("nan"), float("nan"), len(names)))
            continue
        picks = rng.integers(0, len(names), size=(n_boot, len(names)))
        total_sst = sst[picks].sum(axis=1)  # n_boot
        ok = total_sst > MIN_TARGET_VARIANCE
        stats = np.mean(1.0 - sse[:, picks[ok]].sum(axis=2) / total_sst[ok], axis=0)
        lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2]) if stats.size else (np.nan, np.nan)
        out.append((estimate, float(min(lo, estimate)), float(max(hi, estimate)), len(names)))
    return out


def _fit_predict(x, y, groups, splits, alphas, inner_folds) -> np.ndarray:
    """Out-of-fold predictions ``N×K`` (the body of :func:`out_of_fold_predictions`)."""
    # lazy: start-up: scikit-learn takes seconds to import (see grouped_folds)
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.full(y.shape, np.nan)
    present = np.isfinite(y)
    # Targets that share their rows are fitted together (the usual case: all of them).
    if present.all():
        blocks = [(np.arange(y.shape[1]), np.ones(len(y), dtype=bool))]
    else:
        blocks = [(np.array([k]), present[:, k]) for k in range(y.shape[1])]
    for cols, rows in blocks:
        yk = y[:, cols]
        for train, test in splits:
            train, test = train[rows[train]], test[rows[test]]
            if len(train) < 2 or len(test) < 1:
                continue
            chosen = select_alpha(x[train], yk[train], groups[train], alphas, inner_folds)
            model = make_pipeline(
                StandardScaler(), Ridge(alpha=np.asarray(alphas, dtype=np.float64)[chosen])
            )
            fitted = model.fit(x[train], yk[train]).predict(x[test]).reshape(len(test), len(cols))
            pred[np.ix_(test, cols)] = fitted
    return pred


# -- front-end features ---------------------------------------------------------------------
@torch.no_grad()
def frontend_probe_data(
    frontend: torch.nn.Module,
    batches: Iterable[dict],
    *,
    sample_rate: int,
    band: tuple[float, float] | None = None,
    method: str = "butter",
    order: int = 8,
    device: torch.device | str = "cpu",
) -> ProbeData:
    """Run ``frontend`` over collated batches (``audio B×S``, ``cues B×F×K``, ``has_cues B``,
    ``speaker_id`` or ``clip_id``) → one feature row per frame (tokens ``B×F×N×D`` flattened to
    ``(B·F)×(N·D)``); ``groups`` are the frames' speakers (clip ids when a batch has none).

    With ``band=(lo, hi)`` the audio is band-passed to that band first. Windows without ground
    truth are skipped.
    """
    feats, targets, groups = [], [], []
    frontend = frontend.eval()
    for batch in batches:
        keep = torch.as_tensor(batch["has_cues"], dtype=torch.bool)
        if not keep.any():
            continue
        audio = batch["audio"][keep]
        if band is not None:
            audio = bandpass(audio, band[0], band[1], sample_rate, method=method, order=order)
        cues = batch["cues"][keep]
        num_frames = cues.shape[1]
        tokens = frontend(audio.to(device), num_frames)  # B×F×N×D
        b = tokens.shape[0]
        feats.append(tokens.float().reshape(b * num_frames, -1).cpu().numpy())
        targets.append(cues.reshape(b * num_frames, -1).numpy())
        units = batch.get("speaker_id", batch["clip_id"])  # speakers; clips for bare batches
        ids = [unit for unit, k in zip(units, keep.tolist()) if k]
        groups.extend(np.repeat(np.asarray(ids, dtype=object), num_frames))
    if not feats:
        raise ProbeError("no window with ground-truth cues to probe (prepared real data has none)")
    return ProbeData(np.concatenate(feats), np.concatenate(targets), np.asarray(groups))


def probe_frontend(
    frontends: Sequence[torch.nn.Module],
    batches: Sequence[dict],
    *,
    name: str,
    cue_names: Sequence[str],
    sample_rate: int,
    bands: Sequence[tuple[float, float]] = (),
    folds: int = 5,
    alphas: Sequence[float] = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4),
    method: str = "butter",
    order: int = 8,
    n_boot: int = 1000,
    alpha: float = 0.05,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[dict]:
    """Probe table rows (:data:`TABLE_COLUMNS`) for one front-end over the full band and each band.

    ``frontends`` holds one instance per seed (e.g. random inits with different seeds; one
    trained front-end is a list of one). The R² is the held-out R² of out-of-fold predictions
    (mean over seeds), its CI a cluster bootstrap over speakers (:func:`unit_r2`); ``n`` is the
    number of speakers.
    """
    rows = []
    conditions: list[tuple[str, float, float, tuple[float, float] | None]] = [
        (FULL_BAND, 0.0, sample_rate / 2.0, None)
    ]
    conditions += [(band_label(lo, hi), lo, hi, (lo, hi)) for lo, hi in bands]
    for label, lo, hi, band in tqdm(
        conditions, desc=f"probe {name}", disable=not progress, leave=False
    ):
        predictions, data = [], None
        for frontend in frontends:
            data = frontend_probe_data(
                frontend,
                batches,
                sample_rate=sample_rate,
                band=band,
                method=method,
                order=order,
                device=device,
            )
            pred, _ = out_of_fold_predictions(
                data.features, data.targets, data.groups, folds=folds, alphas=alphas
            )
            predictions.append(pred)
        scores = unit_r2(data.targets, predictions, data.groups, n_boot=n_boot, alpha=alpha)
        for k, cue in enumerate(cue_names):
            estimate, lo_ci, hi_ci, n_units = scores[k]
            rows.append(
                {
                    "frontend": name,
                    "band": label,
                    "lo_hz": float(lo),
                    "hi_hz": float(hi),
                    "cue": cue,
                    "r2": estimate,
                    "ci_lo": lo_ci,
                    "ci_hi": hi_ci,
                    "n": n_units,
                }
            )
    return rows


def build_frontend_at_init(
    name: str, *, sample_rate: int, fps: float, seed: int, overrides: Sequence[str] = ()
) -> torch.nn.Module:
    """A registered front-end with its config-group defaults (``singer/conf/frontend/<name>.yaml``,
    plus ``overrides`` such as ``"random_init=true"``), randomly initialised from ``seed``.

    Raises the registry's unknown-name error, or the weights module's missing-file error for a
    front-end that needs a pretrained file.
    """
    FRONTENDS.check(name)
    kwargs: dict = {}
    try:
        text = files(CONFIG_MODULE).joinpath("frontend", f"{name}.yaml").read_text(encoding="utf-8")
        kwargs = OmegaConf.to_container(OmegaConf.create(text), resolve=True) or {}
    except (FileNotFoundError, OSError):
        pass  # a front-end without a config group: its constructor defaults
    if overrides:  # key=value relative to the front-end's config, e.g. random_init=true
        kwargs.update(OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides))))
    kwargs.pop("name", None)
    # lazy: start-up: a singer.models module loads every model (timm, diffusers: seconds),
    # which importing the evaluation package does without
    from singer.models.spec import component_init

    with component_init(
        seed, "frontend"
    ):  # the stream a training run of this seed builds its front-end from
        return FRONTENDS.build(name, sample_rate=sample_rate, fps=fps, **kwargs)


def probe_frontends(
    names: Sequence[str],
    *,
    batches: Sequence[dict] | None = None,
    checkpoint=None,
    data_cache: str | None = None,
    protocol=None,
    seeds: Sequence[int] | None = None,
    overrides: dict[str, Sequence[str]] | None = None,
    cue_names: Sequence[str] | None = None,
    sample_rate: int | None = None,
    fps: float | None = None,
    on_error: str = "raise",
    device: str = "cpu",
    progress: bool = True,
) -> tuple[list[dict], dict[str, str]]:
    """Probe registered front-ends at their init (no generator involved) → ``(rows, errors)``.

    Data: explicit collated ``batches``, else the probe windows of ``checkpoint``'s data config
    (or of the default training config, with ``data_cache`` as a prepared cache when given).
    ``seeds`` (default: the protocol's) give one random init each. ``overrides[name]`` are
    ``key=value`` settings for that front-end (e.g. ``["random_init=true"]`` for wav2vec2).
    ``on_error="skip"`` records a front-end that cannot be built in ``errors`` and goes on.
    """
    protocol = protocol or EvalProtocol()
    seeds = list(seeds if seeds is not None else protocol.seeds)
    if batches is None or sample_rate is None or fps is None:
        loaded_batches, cfg = load_probe_batches(
            checkpoint=checkpoint, data_cache=data_cache, protocol=protocol
        )
        batches = batches if batches is not None else loaded_batches
        sample_rate = sample_rate or int(cfg.data.sample_rate)
        fps = fps or float(cfg.data.fps)
    if cue_names is None:
        cue_names = face_cue_names()
    rows, errors = [], {}
    for name in names:
        try:
            instances = [
                build_frontend_at_init(
                    name,
                    sample_rate=sample_rate,
                    fps=fps,
                    seed=s,
                    overrides=(overrides or {}).get(name, ()),
                ).to(device)
                for s in seeds
            ]
        except Exception as err:  # noqa: BLE001 - reported per front-end
            if on_error != "skip":
                raise
            errors[name] = f"{type(err).__name__}: {err}"
            warnings.warn(f"probe of front-end '{name}' skipped: {errors[name]}", stacklevel=2)
            continue
        rows += probe_frontend(
            instances,
            batches,
            name=f"{name}@init",
            cue_names=cue_names,
            sample_rate=sample_rate,
            bands=protocol.bands,
            folds=protocol.probe_folds,
            alphas=protocol.probe_alphas,
            method=protocol.band_filter,
            order=protocol.band_filter_order,
            n_boot=protocol.bootstrap,
            alpha=protocol.alpha,
            device=device,
            progress=progress,
        )
    return rows, errors
