"""Vocal separators: registry, chunked overlap-add, mask_net, pretrained Hybrid Demucs, SI-SDR."""

import json
import math
import numpy as np
import pytest
import torch

from singer.cli import UserError
from singer.metrics.base import EvalBatch
from singer.metrics.separation import SISDR, si_sdr
from singer.registry import METRICS, SEPARATORS, UnknownNameError
from singer.separation import (
    Separator,
    cache_separator,
    check_separator,
    load_separator,
    parse_separator_args,
    separate,
    separator_from_command_line,
)
from singer.separation.base import chunk_spans
from singer.separation.mask_net import MaskNet, Recipe, train_mask_net, training_pairs
from singer.weights import MissingWeightsError, WeightsChecksumError, sha256_file

SR = 16000


def _tone_mixture(seconds=1.0, seed=0):
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))).astype(
        np.float32
    )


# -- registry and options -----------------------------------------------------------------------
def test_registered_and_listed(capsys):
    from singer.registry import main

    assert {"none", "mask_net", "hdemucs"} <= set(SEPARATORS.names())
    assert main(["separator"]) == 0  # python -m singer.registry separator
    out = capsys.readouterr().out
    assert out.startswith("separator")
    for name in ("none", "mask_net", "hdemucs"):
        assert f"    {name}" in out


def test_options_parse_and_are_checked():
    args = parse_separator_args(
        ["checkpoint=/w/x.pt", "sha256=0123abc", "chunk_seconds=10", "overlap_seconds=0.5"]
    )
    assert args == {
        "checkpoint": "/w/x.pt",
        "sha256": "0123abc",
        "chunk_seconds": 10,
        "overlap_seconds": 0.5,
    }
    assert parse_separator_args(["sha256=0123"]) == {"sha256": "0123"}  # never a number
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_separator_args(["checkpoint"])
    with pytest.raises(ValueError, match="has no option 'chekpoint'.*checkpoint"):
        load_separator("mask_net", {"chekpoint": "x"})
    with pytest.raises(UnknownNameError, match="Known separator names: hdemucs, mask_net, none"):
        check_separator("demucs")
    with pytest.raises(ValueError, match="no option"):
        check_separator("none", ["checkpoint=x"])
    assert check_separator("none") == {}


def test_command_line_separator_options_are_one_user_error():
    """``--separate``/``--separator-arg`` of prepare and generate: None when no separator is
    asked for, the checked options otherwise, and one UserError (exit status 2) for a mistake."""
    assert separator_from_command_line("none", []) is None
    assert separator_from_command_line("mask_net", ["checkpoint=random"]) == {
        "checkpoint": "random"
    }
    for name, items, words in (
        ("demucs", [], "--separate demucs: .*Known separator names"),
        ("none", ["checkpoint=x"], "--separate none: .*no option"),
        ("mask_net", ["checkpoint"], "KEY=VALUE"),
    ):
        with pytest.raises(UserError, match=words) as info:
            separator_from_command_line(name, items)
        assert "python -m singer.registry separator" in info.value.todo


# -- chunking -----------------------------------------------------------------------------------
class _Recorder(Separator):
    """Returns ``2·x + chunk index`` mixed in; records every chunk length it was given."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.lengths = []

    def separate_chunk(self, mixture):
        self.lengths.append(mixture.shape[-1])
        return 2.0 * mixture


@pytest.mark.parametrize("total", [100, 1600, 1601, 5000, 16000 + 37])
def test_overlap_add_is_exact_and_chunks_are_bounded(total):
    sep = _Recorder(chunk_seconds=0.1, overlap_seconds=0.02)  # 1600-sample chunks at 16 kHz
    x = torch.from_numpy(
        np.random.default_rng(total).standard_normal((2, total)).astype(np.float32)
    )
    y = sep(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, 2.0 * x, atol=1e-5, rtol=1e-5)
    assert max(sep.lengths) <= 1600
    assert sum(sep.lengths) >= total
    assert sep(x[0]).shape == (total,)  # a 1-D waveform stays 1-D


def test_chunk_spans_cover_and_overlap():
    spans = chunk_spans(10_000, 3000, 500)
    assert spans[0][0] == 0 and spans[-1][1] == 10_000
    assert all(b - a == 3000 for a, b in spans)
    assert all(spans[i + 1][0] <= spans[i][1] - 500 for i in range(len(spans) - 1))
    assert chunk_spans(100, 3000, 500) == [(0, 100)]
    with pytest.raises(ValueError, match="overlap_seconds"):
        _Recorder(chunk_seconds=1.0, overlap_seconds=0.6)


def test_long_input_shows_progress(capsys):
    sep = _Recorder(chunk_seconds=0.05, overlap_seconds=0.01)
    sep(torch.zeros(1, SR), progress=True)
    assert "chunk" in capsys.readouterr().err


# -- none and mask_net --------------------------------------------------------------------------
def test_none_returns_the_mixture():
    mixture = _tone_mixture()
    np.testing.assert_array_equal(separate(mixture, "none"), mixture)


def test_mask_net_keeps_length_also_for_short_and_resampled_input():
    net = MaskNet()
    for length in (100, 512, 16000 + 3):
        out = net(torch.randn(2, length))
        assert out.shape == (2, length) and torch.isfinite(out).all()
    mixture = _tone_mixture(0.7)
    out = separate(mixture, "mask_net", {"checkpoint": "random"}, sample_rate=22050)
    assert out.shape == mixture.shape and out.dtype == np.float32
    # A mask in (0, 1) only removes: the estimate is never louder than the mixture, by much.
    assert np.sqrt(np.mean(out**2)) < 1.01 * np.sqrt(np.mean(mixture**2))


def test_mask_net_checkpoint_errors(tmp_path):
    with pytest.raises(MissingWeightsError, match="python -m singer.separation.train"):
        load_separator("mask_net", {"checkpoint": str(tmp_path / "nowhere.pt")})
    bad = tmp_path / "bad.pt"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not a mask_net checkpoint"):
        load_separator("mask_net", {"checkpoint": str(bad)})
    with pytest.raises(ValueError, match="do not apply to a given checkpoint"):
        load_separator("mask_net", {"checkpoint": str(bad), "steps": 3})


@pytest.fixture(scope="module")
def tiny_mask_net(tmp_path_factory):
    """A mask_net trained for 3 steps on 2 performances (the machinery, not the quality)."""
    path = tmp_path_factory.mktemp("mask_net") / "mask_net.pt"
    return train_mask_net(Recipe(pairs=2, steps=3, batch_size=2), path, progress=False)


def test_trained_checkpoint_loads_and_separates(tiny_mask_net):
    state = torch.load(tiny_mask_net, weights_only=True)
    assert state["format"] == "singer.mask_net" and state["recipe"]["steps"] == 3
    sep = load_separator("mask_net", {"checkpoint": str(tiny_mask_net)})
    mixture = _tone_mixture()
    out = sep(torch.from_numpy(mixture))
    assert out.shape == mixture.shape and torch.isfinite(out).all()
    assert not torch.equal(out, torch.from_numpy(mixture))


def test_first_use_trains_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SINGER_CACHE", str(tmp_path / "cache"))
    options = {"steps": 2, "pairs": 2, "seed": 5}
    sep = load_separator("mask_net", options)
    files = list((tmp_path / "cache" / "separators").glob("mask_net-*.pt"))
    assert len(files) == 1 and sep.source == str(files[0])
    stamp = files[0].stat().st_mtime_ns
    from singer.separation import base

    base._LOADED.clear()  # a new process: built again from the cached file, not retrained
    again = load_separator("mask_net", options)
    assert again.source == sep.source and files[0].stat().st_mtime_ns == stamp
    for a, b in zip(sep.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_mask_net_learns_to_separate_held_out_speakers(tmp_path):
    """A short training run already lifts SI-SDR on speakers and music it never saw."""
    path = train_mask_net(Recipe(pairs=8, steps=120, seed=0), tmp_path / "m.pt", progress=False)
    net = load_separator("mask_net", {"checkpoint": str(path)})
    voices, beds = training_pairs(4, seed=99)  # other speakers and beds
    gain = (voices.pow(2).mean(-1, keepdim=True) / beds.pow(2).mean(-1, keepdim=True)).sqrt()
    mixture = voices + gain * beds  # 0 dB voice-to-music
    before = si_sdr(mixture.double(), voices.double())
    after = si_sdr(net(mixture).double(), voices.double())
    assert float((after - before).mean()) > 2.0, (before, after)


# -- hdemucs: pretrained Hybrid Demucs from a local state dict ----------------------------------
def test_hdemucs_without_its_file_says_what_to_do(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        load_separator("hdemucs")
    text = str(info.value)
    assert "`checkpoint` is not set" in text and "HDEMUCS_HIGH_MUSDB_PLUS" in text
    assert "--separator-arg checkpoint=" in text
    with pytest.raises(MissingWeightsError, match="which is not a file"):
        load_separator("hdemucs", {"checkpoint": str(tmp_path / "hdemucs_high.pt")})


@pytest.fixture(scope="module")
def random_hdemucs(tmp_path_factory):
    """A randomly initialised torchaudio hdemucs_low state dict: the format of the real file."""
    from torchaudio.models import hdemucs_low

    torch.manual_seed(0)
    model = hdemucs_low(sources=["drums", "bass", "other", "vocals"])
    path = tmp_path_factory.mktemp("hdemucs") / "hdemucs_low.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_hdemucs_loads_a_checked_state_dict_and_returns_its_vocals(random_hdemucs):
    path, model = random_hdemucs
    digest = sha256_file(path)
    options = {"checkpoint": str(path), "sha256": digest, "arch": "low", "chunk_seconds": 0.5}
    options["overlap_seconds"] = 0.1
    sep = load_separator("hdemucs", options)
    mixture = _tone_mixture(0.8)
    out = separate(mixture, "hdemucs", options)
    assert out.shape == mixture.shape and np.isfinite(out).all()
    # It is the loaded network's vocals source: the same weights give the same output directly.
    for a, b in zip(sep.model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        import torchaudio.functional as AF

        x = torch.from_numpy(mixture)
        norm = (x - x.mean()) / x.std()
        up = AF.resample(norm[None], SR, 44100)[:, None].expand(1, 2, -1).contiguous()
        direct = AF.resample(model.eval()(up)[:, 3].mean(1), 44100, SR)[0, : len(mixture)]
        direct = direct * x.std() + x.mean()
    whole = load_separator("hdemucs", {**options, "chunk_seconds": 10.0})(x)  # one chunk
    torch.testing.assert_close(whole, direct, atol=1e-4, rtol=1e-3)


def test_hdemucs_rejects_a_wrong_digest_or_architecture(random_hdemucs):
    path, _ = random_hdemucs
    with pytest.raises(WeightsChecksumError, match="wrong sha256"):
        load_separator("hdemucs", {"checkpoint": str(path), "sha256": "0" * 64, "arch": "low"})
    with pytest.raises(ValueError, match="not a state dict of torchaudio's hdemucs_high"):
        load_separator("hdemucs", {"checkpoint": str(path), "sha256": sha256_file(path)})


# -- SI-SDR ------------------------------------------------------------------------------------
def test_si_sdr_values():
    t = torch.arange(16000, dtype=torch.float64) / 16000
    ref = torch.sin(2 * math.pi * 100 * t)
    orthogonal = torch.cos(2 * math.pi * 100 * t)  # equal power, orthogonal over whole periods
    assert float(si_sdr(ref + orthogonal, ref)) == pytest.approx(0.0, abs=1e-6)
    assert float(si_sdr(ref + 0.1 * orthogonal, ref)) == pytest.approx(20.0, abs=1e-6)
    assert float(si_sdr(-3.0 * (ref + 0.1 * orthogonal), ref)) == pytest.approx(20.0, abs=1e-6)
    assert math.isnan(float(si_sdr(ref, torch.zeros_like(ref))))
    batch = si_sdr(torch.stack([ref + orthogonal, ref + 0.1 * orthogonal]), torch.stack([ref, ref]))
    assert batch.shape == (2,)


def test_si_sdr_metric_per_clip():
    assert "si_sdr" in METRICS.names()
    metric = METRICS.build("si_sdr")
    assert isinstance(metric, SISDR) and metric.reads_video is False
    t = torch.arange(8000, dtype=torch.float64) / 16000
    vocals = torch.stack([torch.sin(2 * math.pi * 200 * t), torch.sin(2 * math.pi * 300 * t)])
    music = torch.cos(2 * math.pi * 200 * t).expand(2, -1)
    mixture = vocals + music
    estimate = vocals + 0.1 * music
    metric.update(
        EvalBatch(
            generated=torch.zeros(2, 3, 1, 2, 2),
            reference=None,
            audio=estimate.float(),
            sample_rate=16000,
            fps=25,
            vocals=vocals.float(),
            mixture=mixture.float(),
        )
    )
    metric.update(
        EvalBatch(
            generated=torch.zeros(1, 3, 1, 2, 2),
            reference=None,
            audio=estimate[:1].float(),
            sample_rate=16000,
            fps=25,
        )
    )  # no clean voice: NaN
    clips = metric.per_clip()
    assert len(clips["separation/si_sdr"]) == 3 and math.isnan(clips["separation/si_sdr"][2])
    improvement = clips["separation/si_sdr_improvement"]
    expected = float(si_sdr(estimate[0], vocals[0]) - si_sdr(mixture[0], vocals[0]))
    assert improvement[0] == pytest.approx(expected, abs=1e-3) and improvement[0] > 10
    summary = metric.compute()
    assert summary["separation/si_sdr"] == pytest.approx(np.mean(clips["separation/si_sdr"][:2]))


def test_cache_separator_reads_prepare_json(tmp_path):
    assert cache_separator(tmp_path) == "none"  # no cache, or one made before separators
    (tmp_path / "prepare.json").write_text(
        '{"settings": {"separator": {"name": "mask_net", "args": {}}}}'
    )
    assert cache_separator(tmp_path) == "mask_net"


# -- the measurement command --------------------------------------------------------------------
def test_measure_scores_separators_on_held_out_clips(tmp_path, capsys):
    from singer.separation.measure import main, measure

    result = measure(
        tmp_path / "m",
        separators={"none": {}, "mask_net": {"checkpoint": "random"}},
        vmr_levels=[3.0],
        clips=2,
        seconds=1.0,
        bootstrap=50,
        progress=False,
    )
    rows = {row["separator"]: row for row in result["rows"]}
    assert rows["none"]["si_sdr_improvement"] == 0.0 and rows["none"]["clips"] == 2
    assert rows["none"]["speakers"] == 1  # SynthSing clips 0 and 1 share a speaker
    assert abs(rows["none"]["si_sdr_mixture"] - 3.0) < 1.5
    assert rows["mask_net"]["si_sdr_mixture"] == rows["none"]["si_sdr_mixture"]  # paired
    assert rows["mask_net"]["si_sdr_improvement"] != 0.0
    table = (tmp_path / "m" / "separation.md").read_text()
    assert "| +3 | mask_net |" in table and "2 (1)" in table
    saved = json.loads((tmp_path / "m" / "separation.json").read_text())
    assert len(saved["per_clip"]["+3dB/mask_net"]["separation/si_sdr"]) == 2
    assert main(["--out", str(tmp_path / "x"), "--separators", "none", "nosuch"]) == 2
    assert "unknown separator 'nosuch'" in capsys.readouterr().err
