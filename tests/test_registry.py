import subprocess
import sys

import pytest

from singer.registry import BACKBONES, CODECS, FRONTENDS, MODELS, Registry, UnknownNameError, format_listing


def test_register_build_and_list():
    reg = Registry("widget_test", "test widgets")

    @reg.register("double")
    def double(x):
        """Doubles."""
        return 2 * x

    assert reg.build("double", 4) == 8
    assert reg.names() == ["double"]
    assert "double" in reg
    assert reg.describe() == {"double": "Doubles."}
    with pytest.raises(ValueError, match="already registered"):
        reg.register("double", lambda x: x)


def test_unknown_name_lists_known_names_and_suggests():
    with pytest.raises(UnknownNameError) as info:
        FRONTENDS.build("mell")
    text = str(info.value)
    assert "unknown frontend 'mell'" in text
    for name in ("mel", "msm", "raw", "sfm", "wav2vec2"):
        assert name in text
    assert "Did you mean 'mel'?" in text


def test_project_components_are_registered():
    assert {"raw", "mel", "msm", "sfm", "wav2vec2"} <= set(FRONTENDS.names())
    assert "unet3d" in BACKBONES.names()
    assert "identity" in CODECS.names()
    assert "singer" in MODELS.names()


def test_listing_cli_groups_everything():
    out = subprocess.run([sys.executable, "-m", "singer.registry"], capture_output=True, text=True, check=True).stdout
    for header in ("frontend", "backbone", "codec", "model"):
        assert any(line.startswith(header) for line in out.splitlines()), out
    assert "    msm" in out and "    unet3d" in out and "    singer" in out
    assert format_listing().count("\n") > 8


def test_listing_cli_rejects_unknown_kind():
    proc = subprocess.run([sys.executable, "-m", "singer.registry", "gizmo"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "unknown kind 'gizmo'" in proc.stderr
