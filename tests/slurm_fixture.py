"""The local SLURM cluster fixture, shared by the test modules that need a real cluster.

``slurm_cluster`` installs (slurm/local/install.sh) and starts (slurm/local/start.sh) a
one-node cluster in a temporary folder, on free ports, and stops it (slurm/local/stop.sh)
at the end. Without root, or when the install fails, the tests skip, unless
SINGER_REQUIRE_SLURM=1 (CI), which turns that into a failure. A cluster that is installed
but fails to start is always a failure.

Each module that imports the fixture gets its own session fixture definition from pytest;
the cluster itself is started once per test process and stopped when the last user ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

LOCAL = Path(__file__).resolve().parent.parent / "slurm" / "local"
REQUIRED = os.environ.get("SINGER_REQUIRE_SLURM", "") not in ("", "0")

_shared: dict = {"state": None, "users": 0}


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"SINGER_REQUIRE_SLURM is set but the SLURM cluster is unavailable: {reason}")
    pytest.skip(reason)


def _free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [s.getsockname()[1] for s in sockets]
    for sock in sockets:
        sock.close()
    return ports


def sacct(*args: str) -> list[list[str]]:
    """``sacct --noheader --parsable2 ARGS``, one list of fields per line."""
    out = subprocess.run(
        ["sacct", "--noheader", "--parsable2", *args], check=True, capture_output=True, text=True
    ).stdout
    return [line.split("|") for line in out.splitlines() if line]


def _start(tmp_path_factory) -> Path:
    if os.geteuid() != 0:
        _unavailable("the local SLURM cluster needs root (slurm/local/install.sh, start.sh)")
    install = subprocess.run(["bash", str(LOCAL / "install.sh")], capture_output=True, text=True)
    daemons = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch")
    missing = [c for c in daemons if not shutil.which(c)]
    if install.returncode != 0 or missing:
        _unavailable(
            f"slurm/local/install.sh did not provide {missing or 'the cluster'} "
            f"(rc={install.returncode}): {install.stdout}{install.stderr}"
        )

    state = tmp_path_factory.mktemp("slurm")
    # Free ports, so that a cluster someone else runs on the default ports does not clash.
    names = (
        "SINGER_SLURM_CTLD_PORT",
        "SINGER_SLURM_SLURMD_PORT",
        "SINGER_SLURM_DBD_PORT",
        "SINGER_SLURM_DB_PORT",
    )
    env = dict(os.environ, **dict(zip(names, map(str, _free_ports(len(names))))))
    start = subprocess.run(
        ["bash", str(LOCAL / "start.sh"), str(state)], env=env, capture_output=True, text=True
    )
    if start.returncode != 0:  # installed but not starting: a real failure, never a skip
        subprocess.run(["bash", str(LOCAL / "stop.sh"), str(state)], check=False)
        pytest.fail(
            f"slurm/local/start.sh failed (rc={start.returncode}):\n{start.stdout}{start.stderr}"
        )
    return state


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Start the local cluster; yields its state folder with SLURM_CONF set for this process."""
    if _shared["state"] is None:
        _shared["state"] = _start(tmp_path_factory)
    state = _shared["state"]
    _shared["users"] += 1
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", str(state / "etc" / "slurm.conf"))
            yield state
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            _shared["state"] = None
            subprocess.run(["bash", str(LOCAL / "stop.sh"), str(state)], check=False)
