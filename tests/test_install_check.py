"""The install check names a broken package in one line and fails; a working set passes."""

import subprocess
import sys

import pytest

from singer import install_check


def test_a_broken_package_is_named_in_one_line(monkeypatch, capsys):
    def broken():
        raise OSError("Could not load this library: libtorchaudio.so")

    monkeypatch.setitem(install_check.CHECKS, "torchaudio", broken)
    assert install_check.main(["--in-process", "--only", "torchaudio", "ptwt"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "error: torchaudio does not work: OSError: Could not load this library"
    )
    assert "make clean install" in lines[0]
    assert lines[1].startswith("ok ptwt")


@pytest.mark.slow
def test_the_locked_environment_passes():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "singer.install_check",
            "--only",
            "torch",
            "torchaudio",
            "av",
            "ptwt",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "packages load and work" in proc.stdout


def test_lock_pins_the_torchaudio_pair_that_loads():
    import tomllib
    from pathlib import Path

    lock = tomllib.loads((Path(__file__).parents[1] / "uv.lock").read_text())
    versions = {p["name"]: p["version"] for p in lock["package"]}
    assert versions["torch"].startswith("2.11.0")
    assert versions["torchaudio"] == "2.11.0"
