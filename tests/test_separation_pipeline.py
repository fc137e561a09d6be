"""Separation where it applies: prepare --separate, SynthSing-with-accompaniment caches and their
config keys, the MLflow tag, generate --separate (mixture kept as the soundtrack), the sweep file."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from singer.config import ConfigError, compose
from singer.data import prepare as P
from singer.data.cache import ensure_synthsing, separation_options
from singer.data.media import read_audio
from singer.metrics.separation import si_sdr
from singer.separation import cache_separator, separate
from tiny import FAST

# An untrained mask_net: cheap, deterministic, and it changes the audio (which is what is checked).
RANDOM_NET = {"checkpoint": "random"}


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """A SynthSing set with accompaniment, generated and prepared unseparated (3 × 1 s clips)."""
    root = tmp_path_factory.mktemp("songs")
    cache = ensure_synthsing(
        root,
        clips=3,
        seconds=1.0,
        seed=4,
        size=32,
        clip_size=32,
        accompaniment=True,
        vmr_db=0.0,
        progress=False,
    )
    return root, cache.parent / "raw", cache


def _index(cache: Path) -> list[dict]:
    return [json.loads(line) for line in (cache / "index.jsonl").read_text().splitlines()]


def test_prepare_separate_stores_the_separated_voice_and_records_it(songs, tmp_path):
    _, raw, plain = songs
    out = tmp_path / "cache"
    code = P.main(
        [
            *("--src", str(raw), "--out", str(out), "--no-detect", "--quiet", "--size", "32"),
            *("--separate", "mask_net", "--separator-arg", "checkpoint=random"),
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["separator"] == {"name": "mask_net", "args": RANDOM_NET}
    assert report["counts"]["ok"] == 3 and "vocals/clip00000.wav" in report["ignored"]
    assert cache_separator(out) == "mask_net" and cache_separator(plain) == "none"
    for entry, unseparated in zip(_index(out), _index(plain), strict=True):
        assert entry["separator"] == "mask_net" and unseparated["separator"] == "none"
        assert entry["truth"] == unseparated["truth"]  # the face truth follows the voice only
        with np.load(out / entry["file"]) as clip, np.load(plain / unseparated["file"]) as ref:
            mixture = read_audio(raw / entry["source"], 16000, num_samples=entry["num_samples"])
            np.testing.assert_allclose(ref["audio"], mixture, atol=1e-6)
            expected = separate(mixture, "mask_net", RANDOM_NET)
            np.testing.assert_allclose(clip["audio"], expected, atol=1e-5)
            assert np.abs(clip["audio"] - ref["audio"]).max() > 1e-3
            np.testing.assert_array_equal(clip["frames"], ref["frames"])


def test_prepare_rejects_a_bad_separator_before_any_work(songs, tmp_path, capsys):
    _, raw, _ = songs
    base = ["--src", str(raw), "--out", str(tmp_path / "c"), "--no-detect", "--quiet"]
    assert P.main([*base, "--separate", "mask_nett"]) == 2
    assert "Known separator names: hdemucs, mask_net, none" in capsys.readouterr().err
    assert P.main([*base, "--separate", "hdemucs"]) == 2
    assert "`checkpoint` is not set" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_cache_folders_keep_settings_apart(tmp_path):
    cfg = compose([*FAST, "data.synth.accompaniment=true", "data.synth.vmr_db=-6"])
    options = separation_options(cfg.data)
    assert options == {
        "accompaniment": True,
        "vmr_db": -6.0,
        "music_style": "mixed",
        "separator": "none",
        "separator_args": {},
    }
    cfg = compose(
        ["data.separator=hdemucs", "data.separator_args={checkpoint: /w/h.pt, sha256: abc}"]
    )
    assert separation_options(cfg.data)["separator_args"] == {
        "checkpoint": "/w/h.pt",
        "sha256": "abc",
    }
    assert (
        separation_options(compose(["data=prepared", "data.cache_dir=x"]).data)["separator"]
        == "none"
    )
    with pytest.raises(ConfigError, match="data.separator: unknown separator 'nope'"):
        compose(["data.separator=nope"])

    from singer.data.cache import synthsing_dir
    from singer.data.synth import SYNTH_VERSION

    common = dict(clips=8, seconds=2.0, kind="mixed", seed=0, size=64)
    plain = synthsing_dir(tmp_path, **common)
    assert plain.name == f"mixed-n8-seed0-64px-2s-v{SYNTH_VERSION}"  # no music: no music suffix
    music = {synthsing_dir(tmp_path, **common, accompaniment=True, vmr_db=v) for v in (6, 0, -6)}
    assert len(music | {plain}) == 4


def test_training_on_separated_synthsing_tags_the_run_and_generate_keeps_the_song(
    tmp_path, monkeypatch
):
    """Train 1 step on SynthSing with accompaniment separated by mask_net: the cache index and
    the MLflow run record the separator. Then generate --separate drives the model with the
    separated voice while the mp4's soundtrack stays the original song."""
    from singer import generate as G
    from singer import inference, tracking
    from singer.trainer import train

    cfg = compose(
        [
            *FAST,
            f"data.root={tmp_path / 'data'}",
            "data.synth.accompaniment=true",
            "data.synth.vmr_db=0",
            "data.separator=mask_net",
            "data.separator_args={checkpoint: random}",
            "trainer.steps=1",
            "trainer.val_every=1",
        ]
    )
    result = train(cfg, tmp_path / "run", progress=False)
    cache = Path(json.loads((tmp_path / "run" / "result.json").read_text())["cache"])
    assert "-music-mixed-vmr+0dB" in str(cache)
    assert re.search(r"-sep-mask_net-[0-9a-f]{8}$", cache.name), cache.name
    assert {entry["separator"] for entry in _index(cache)} == {"mask_net"}
    run = tracking.find_run(result.run_id)
    assert run.data.tags["data.separator"] == "mask_net"

    song_mp4 = next((cache.parent / "raw" / "clips").glob("*.mp4"))
    song = read_audio(song_mp4, 16000)
    heard = []
    real = inference.write_video

    def spy(loaded, face, audio, out, **kwargs):
        heard.append(np.array(audio))
        return real(loaded, face, audio, out, **kwargs)

    monkeypatch.setattr(inference, "write_video", spy)
    from PIL import Image

    face = tmp_path / "face.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(face)
    out = tmp_path / "out.mp4"
    args = ["--checkpoint", str(tmp_path / "run"), "--image", str(face), "--audio", str(song_mp4)]
    args += ["--out", str(out), "--steps", "1", "--device", "cpu"]
    assert G.main([*args, "--separate", "mask_net", "--separator-arg", "checkpoint=random"]) == 0
    np.testing.assert_allclose(heard[0], separate(song, "mask_net", RANDOM_NET), atol=1e-5)
    soundtrack = torch.from_numpy(read_audio(out, 16000, num_samples=len(song))).double()
    assert float(si_sdr(soundtrack, torch.from_numpy(song).double())) > 15.0
    assert float(si_sdr(soundtrack, torch.from_numpy(heard[0]).double())) < 10.0

    assert G.main([*args, "--separate", "nosuch"]) == 2
    assert G.main([*args, "--separate", "hdemucs"]) == 2


def test_separation_sweep_file_validates():
    from singer.sweeps.spec import load_sweep

    spec = load_sweep(Path(__file__).parents[1] / "sweeps" / "separation.yaml")
    assert spec.name == "separation" and spec.launcher == "local" and spec.parallel == 2
    assert "data.synth.accompaniment=true" in spec.overrides
    assert {p.key for p in spec.space} == {"data.synth.vmr_db", "data.separator"}
    assert spec.target_trials() == 7
    assert spec.objectives[0].metric == "eval/audio_effect/mean"
    assert spec.compare["reference"] == "clean" and "experiment=laptop_proxy" in spec.overrides
