"""Ridge probes: grouped cross-validated R² from per-frame features to the facial cues."""

import numpy as np
import pytest
import torch

from singer.evaluation.probes import (
    TABLE_COLUMNS,
    ProbeError,
    grouped_folds,
    probe_frontends,
    ridge_path,
    ridge_probe,
    select_alpha,
)
from singer.evaluation.protocol import EvalProtocol
from singer.registry import UnknownNameError


def _clips(num_clips=12, frames=20, cues=3, seed=0):
    """Smooth random cue trajectories (frames × cues per clip) and each frame's clip id."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(num_clips, frames, cues))
    targets = np.cumsum(steps, axis=1).reshape(num_clips * frames, cues)
    groups = np.repeat([f"clip{i}" for i in range(num_clips)], frames)
    return targets, groups, rng


def test_grouped_folds_never_split_a_clip():
    _, groups, _ = _clips()
    splits = grouped_folds(groups, folds=5)
    assert len(splits) == 5
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
    assert sorted(np.concatenate([test for _, test in splits]).tolist()) == list(range(len(groups)))
    with pytest.raises(ProbeError, match="at least 2 speakers"):
        grouped_folds(np.array(["a"] * 10), folds=5)


def test_a_feature_that_encodes_the_cues_linearly_scores_one():
    targets, groups, rng = _clips()
    mixing = rng.normal(size=(3, 16))
    features = targets @ mixing + 1e-3 * rng.normal(size=(len(targets), 16))
    features = np.concatenate(
        [features, rng.normal(size=(len(targets), 16))], axis=1
    )  # + distractors
    scores = ridge_probe(features, targets, groups, folds=4)
    assert scores.shape == (4, 3)
    assert np.all(scores > 0.98), scores


def test_noise_features_score_at_most_zero():
    targets, groups, rng = _clips()
    features = rng.normal(size=(len(targets), 32))
    scores = ridge_probe(features, targets, groups, folds=4)
    assert scores.mean() < 0.05, scores


def test_memorising_a_clip_does_not_count():
    """A clip-id one-hot predicts a per-clip constant perfectly within a clip, but never across clips."""
    _, groups, rng = _clips()
    clip_values = {g: rng.normal() for g in np.unique(groups)}
    target = np.array([clip_values[g] for g in groups])
    one_hot = (groups[:, None] == np.unique(groups)[None, :]).astype(float)
    scores = ridge_probe(one_hot, target, groups, folds=4)
    assert scores.mean() < 0.05, scores


def test_ridge_path_is_sklearn_ridge_on_standardised_features():
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    targets, _, rng = _clips(num_clips=4)
    features = rng.normal(size=(len(targets), 50)) * rng.uniform(0.1, 10, size=50) + 3.0
    alphas = [1e-2, 1.0, 100.0]
    paths = ridge_path(features[:60], targets[:60], features[60:], alphas)
    assert paths.shape == (3, 20, 3)
    for a, alpha in enumerate(alphas):
        model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(features[:60], targets[:60])
        np.testing.assert_allclose(paths[a], model.predict(features[60:]), rtol=1e-7, atol=1e-9)


def test_ridge_strength_is_chosen_across_clips():
    """Strong ridge wins when the only within-clip signal is a clip identity (memorisable), weak
    ridge when the features carry the cue: the inner folds are grouped by clip too."""
    _, groups, rng = _clips()
    clip_values = {g: rng.normal() for g in np.unique(groups)}
    target = np.array([[clip_values[g]] for g in groups])
    one_hot = (groups[:, None] == np.unique(groups)[None, :]).astype(float)
    alphas = [1e-3, 1.0, 1e4]
    assert select_alpha(one_hot, target, groups, alphas).tolist() == [2]
    signal = np.concatenate(
        [target + 1e-3 * rng.normal(size=target.shape), rng.normal(size=(len(target), 8))], 1
    )
    assert select_alpha(signal, target, groups, alphas).tolist() == [0]


def test_a_clip_whose_cue_barely_moves_does_not_blow_up_r2():
    """R² divides by the cue's variance over all frames, not by one held-out clip's (near zero)."""
    _, groups, rng = _clips(num_clips=6)
    clip_values = {g: rng.normal() for g in np.unique(groups)}
    target = np.array([clip_values[g] for g in groups]) + 1e-5 * rng.normal(size=len(groups))
    features = rng.normal(size=(len(groups), 8))
    scores = ridge_probe(features, target, groups, folds=6)  # leave one clip out
    assert np.isfinite(scores).all() and scores.min() > -10, scores
    constant = ridge_probe(features, np.ones(len(groups)), groups, folds=3)
    assert np.isnan(constant).all()


def _fake_batches(num_clips=6, frames=8, seed=0):
    """Collated batches whose audio loudness drives cue 0 (per frame); the other cues are noise."""
    rng = np.random.default_rng(seed)
    spf = 16000 // 25
    batches = []
    for start in range(0, num_clips, 3):
        audio, cues, ids = [], [], []
        for c in range(start, start + 3):
            level = rng.uniform(0.05, 1.0, size=frames)
            t = np.arange(frames * spf) / 16000
            wav = np.repeat(level, spf) * np.sin(2 * np.pi * 440 * t)
            audio.append(wav)
            cues.append(np.stack([level, rng.uniform(size=frames)], axis=1))
            ids.append(f"c{c}")
        batches.append(
            {
                "audio": torch.tensor(np.array(audio), dtype=torch.float32),
                "cues": torch.tensor(np.array(cues), dtype=torch.float32),
                "has_cues": torch.ones(3, dtype=torch.bool),
                "clip_id": ids,
            }
        )
    return batches


def test_probe_frontends_at_init_gives_a_table_per_band():
    protocol = EvalProtocol(
        band_edges=[0, 1000, 8000], probe_folds=3, seeds=[0, 1], bootstrap=100, metrics=[]
    )
    rows, errors = probe_frontends(
        ["mel", "raw"],
        batches=_fake_batches(num_clips=12),
        protocol=protocol,
        cue_names=["level", "noise"],
        sample_rate=16000,
        fps=25,
        progress=False,
    )
    assert errors == {}
    assert len(rows) == 2 * 3 * 2  # front-ends × (full + 2 bands) × cues
    for row in rows:
        assert tuple(row) == TABLE_COLUMNS
        assert row["ci_lo"] <= row["r2"] <= row["ci_hi"]
    table = {(r["frontend"], r["band"], r["cue"]): r for r in rows}
    # log-mel features at init encode loudness (the 440 Hz tone lives below 1 kHz) far better than noise
    assert table[("mel@init", "full", "level")]["r2"] > 0.2
    assert (
        table[("mel@init", "full", "level")]["r2"]
        > table[("mel@init", "full", "noise")]["r2"] + 0.2
    )
    assert (
        table[("mel@init", "0-1kHz", "level")]["r2"] > table[("mel@init", "1k-8kHz", "level")]["r2"]
    )
    assert table[("raw@init", "full", "level")]["r2"] > 0.5


def test_probe_frontends_reports_unusable_frontends():
    protocol = EvalProtocol(band_edges=[0, 8000], probe_folds=2, bootstrap=50, metrics=[])
    common = dict(
        batches=_fake_batches(),
        protocol=protocol,
        cue_names=["level", "noise"],
        sample_rate=16000,
        fps=25,
        progress=False,
    )
    with pytest.raises(UnknownNameError, match="Known frontend names"):
        probe_frontends(["no-such-frontend"], **common)
    rows, errors = probe_frontends(
        ["wav2vec2", "mel"], overrides={"wav2vec2": ["encoder_layers=1"]}, on_error="skip", **common
    )
    assert (
        "MissingWeightsError" in errors["wav2vec2"]
        and "frontend.pretrained_path" in errors["wav2vec2"]
    )
    assert {r["frontend"] for r in rows} == {"mel@init"}
