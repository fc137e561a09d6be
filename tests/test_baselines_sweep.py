"""sweeps/baselines.yaml: it validates, names every registered baseline, and its models are
matched in size (±20 % trainable parameters of SINGER's at the sweep's own overrides)."""

from pathlib import Path

import pytest

from singer.params import count_for, main
from singer.registry import MODELS
from singer.sweeps.spec import load_sweep

SWEEP = Path(__file__).resolve().parent.parent / "sweeps" / "baselines.yaml"
# Registered models that are not baselines and so are not compared: the autoencoder and the
# lip-sync expert generate no video, and face_params is the laptop proxy (face parameters, not
# pixels; experiment=laptop_proxy), which has sweeps of its own.
AUXILIARY = {"autoencoder", "syncnet", "face_params"}


@pytest.fixture(scope="module")
def spec():
    return load_sweep(SWEEP)


def test_baselines_sweep_validates_and_covers_every_baseline(spec):
    assert spec.name == "baselines" and spec.launcher == "local" and spec.parallel == 2
    assert len(spec.seeds) >= 2 and spec.evaluate is not None
    space = {p.key: p for p in spec.space}
    models = list(space["model"].values)
    assert set(models) == set(MODELS.names()) - AUXILIARY, (
        "a registered baseline is missing from the sweep"
    )
    assert models[0] == "singer"
    assert set(space["data.synth.kind"].values) == {"singing", "talking"}
    assert [o.metric for o in spec.objectives] == ["eval/ssim"]


def test_baselines_are_matched_in_size(spec, tmp_path):
    base = [*spec.overrides, f"data.root={tmp_path}"]
    counts = {m: count_for([*base, f"model={m}"])["trainable"] for m in spec.space[0].values}
    reference = counts["singer"]
    off = {m: round(n / reference, 3) for m, n in counts.items() if abs(n / reference - 1) > 0.2}
    assert not off, (
        f"trainable parameters outside ±20 % of SINGER's {reference:,}: {off} ({counts})"
    )


def test_parameter_count_command(capsys, tmp_path):
    assert (
        main(["model=talking_singer", "backbone.channels=[8,16,32]", f"data.root={tmp_path}"]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("talking_singer: ") and "trainable" in out and "backbone" in out
