"""Sweeps against real services: an MLflow tracking server, the local SLURM cluster, and a
Hydra multirun through hydra-submitit-launcher.

Everything is tiny (a few steps of a very small model on 4 short clips) and stays in the
test's temporary folder; servers are started on free ports and stopped by process id.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from singer.sweep import main
from singer.sweeps.trial import open_storage

from slurm_fixture import sacct
from tiny import FAST, TINY

REPO = Path(__file__).resolve().parent.parent


def write_sweep(tmp_path: Path, data_root: Path, name: str, **fields) -> Path:
    data = {
        "name": name,
        "overrides": [*FAST, f"data.root={data_root}"],
        "space": {"trainer.lr": {"type": "choice", "values": [1.0e-3, 2.0e-3]}},
        "sampler": "grid",
        "objectives": [{"metric": "val/loss", "direction": "minimize"}],
        "seeds": [0],
        "limits": {"parallel": 2},
        "launcher": "debug",
        "timeout_min": 5,
        "mlflow": {"experiment": name},
    }
    data.update(fields)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


def _stop(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, with everything it started (gunicorn/uvicorn workers)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free port with a sqlite backend; yields its URI."""
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    command = [
        str(mlflow_bin),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "server_artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        _wait_for(healthy, 60, f"the MLflow server at {uri}")
        yield uri
    finally:
        _stop(server)
        log.close()


def _parent_and_children(experiment: str):
    runs = mlflow.search_runs(experiment_names=[experiment])
    return runs[runs["tags.sweep.role"] == "parent"], runs[runs["tags.sweep.role"] != "parent"]


def test_sweep_records_nested_runs_on_an_mlflow_server(
    tmp_path, data_root, mlflow_server, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    path = write_sweep(
        tmp_path,
        data_root,
        "served",
        mlflow={"experiment": "served", "tracking_uri": mlflow_server},
    )
    out_dir = tmp_path / "out"
    assert main([str(path), "--out", str(out_dir), "--no-progress", "--poll", "0.2"]) == 0

    mlflow.set_tracking_uri(mlflow_server)
    try:
        parent, children = _parent_and_children("served")
    finally:
        mlflow.set_tracking_uri(None)
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    parent_id = parent["run_id"].iloc[0]
    assert len(children) == 2
    assert (children["tags.mlflow.parentRunId"] == parent_id).all()
    assert sorted(zip(children["tags.trial"], children["tags.seed"])) == [("0", "0"), ("1", "0")]
    assert (children["status"] == "FINISHED").all() and (children["tags.sweep"] == "served").all()
    # The driver recorded the server, and the jobs logged there, not to a local store.
    assert json.loads((out_dir / "sweep_state.json").read_text())["tracking_uri"] == mlflow_server
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slurm
def test_sweep_runs_on_the_local_slurm_cluster(slurm_cluster, tmp_path, data_root):
    path = write_sweep(tmp_path, data_root, "on_slurm", launcher="slurm:local")
    out_dir = tmp_path / "out"
    assert main([str(path), "--out", str(out_dir), "--no-progress", "--poll", "0.5"]) == 0

    study = optuna.load_study(
        study_name="on_slurm", storage=open_storage(f"journal:{out_dir / 'optuna.journal'}")
    )
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state.name == "COMPLETE" for t in trials), [t.user_attrs for t in trials]
    jobs = [t.user_attrs["job.seed0"] for t in trials]
    assert all(job["kind"] == "slurm" for job in jobs), jobs
    job_ids = sorted(str(job["job_id"]) for job in jobs)

    def completed() -> bool:  # accounting may trail the jobs' end by a moment
        rows = sacct("-X", "-j", ",".join(job_ids), "-o", "JobID,State")
        return sorted(rows) == [[job_id, "COMPLETED"] for job_id in job_ids]

    _wait_for(completed, 30, f"sacct to list jobs {job_ids} as COMPLETED")

    _, children = _parent_and_children("on_slurm")
    assert len(children) == 2 and (children["status"] == "FINISHED").all()


def test_hydra_multirun_with_the_submitit_launcher(tmp_path, data_root):
    uri = f"sqlite:///{tmp_path / 'multirun.db'}"
    # A fresh store: singer.train's multirun callback must create it before the jobs start
    # (two first writers of a new sqlite store race on its schema).
    assert not (tmp_path / "multirun.db").exists()
    sweep_dir = tmp_path / "multirun"
    command = [
        sys.executable,
        "-m",
        "singer.train",
        "-m",
        "frontend=mel,msm",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "hydra.launcher.cpus_per_task=1",
        TINY,
        "trainer.steps=2",
        "trainer.val_every=2",
        "data.synth.clips=4",
        "data.synth.seconds=2",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    assert sorted(
        p.relative_to(sweep_dir).as_posix() for p in sweep_dir.glob("*/checkpoints/last.pt")
    ) == [
        "0/checkpoints/last.pt",
        "1/checkpoints/last.pt",
    ]
    client = mlflow.MlflowClient(uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiment_ids)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.data.tags.get("frontend") for r in runs) == ["mel", "msm"], [
        r.data.tags for r in runs
    ]
    assert sorted(r.data.params.get("frontend.name") for r in runs) == ["mel", "msm"]


# -- preemption and cancellation of trials on the real cluster ---------------------------------
SLOW_TRIAL = ["trainer.steps=24", "trainer.val_every=12", "trainer.ckpt_every=2"]


def _start_driver(path: Path, out_dir: Path, cwd: Path) -> subprocess.Popen:
    """The sweep driver as a user runs it, in its own process (the test watches it from outside)."""
    log = open(out_dir.with_suffix(".log"), "wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "singer.sweep",
            str(path),
            "--out",
            str(out_dir),
            "--no-progress",
            "--poll",
            "0.5",
        ],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _job_record(out_dir: Path, key: str) -> dict | None:
    state = out_dir / "sweep_state.json"
    if not state.exists():
        return None
    return json.loads(state.read_text())["jobs"].get(key)


def _checkpoint_step(trial_dir: Path) -> int:
    import torch

    path = trial_dir / "checkpoints" / "last.pt"
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except (FileNotFoundError, RuntimeError, EOFError):  # not written yet
        return -1


def _finish(driver: subprocess.Popen, out_dir: Path, timeout_s: float = 240) -> int:
    try:
        return driver.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _stop(driver)
        raise AssertionError(
            "the driver did not finish:\n" + out_dir.with_suffix(".log").read_text()[-4000:]
        )


@pytest.mark.slurm
def test_preempted_trial_requeues_and_ends_as_if_uninterrupted(slurm_cluster, tmp_path, data_root):
    """SLURM preemption (SIGTERM, then the USR2 signal submitit asked for) of a running trial: the
    job checkpoints, requeues, resumes from its last checkpoint and ends with the value of an
    uninterrupted run, in the same MLflow run."""
    fields = {
        "overrides": [*FAST, f"data.root={data_root}", *SLOW_TRIAL],
        "space": {"trainer.lr": {"type": "choice", "values": [1.0e-3]}},
    }
    reference = write_sweep(tmp_path, data_root, "uninterrupted", **fields)
    assert (
        main(
            [str(reference), "--out", str(tmp_path / "reference"), "--no-progress", "--poll", "0.2"]
        )
        == 0
    )
    expected = (
        optuna.load_study(
            study_name="uninterrupted",
            storage=open_storage(f"journal:{tmp_path / 'reference' / 'optuna.journal'}"),
        )
        .trials[0]
        .value
    )

    path = write_sweep(tmp_path, data_root, "preempted", launcher="slurm:local", **fields)
    out_dir = tmp_path / "preempted"
    driver = _start_driver(path, out_dir, tmp_path)
    try:
        _wait_for(
            lambda: _checkpoint_step(out_dir / "trials" / "0000-seed0") >= 4,
            120,
            "the trial to save a checkpoint past step 4",
        )
        record = _job_record(out_dir, "0-seed0")
        # Preemption as SLURM does it: SIGTERM to the job's processes, then, after a grace time,
        # the USR2 signal submitit asked for. (submitit's _interrupt() sends both at once, and
        # slurmd can then deliver SIGTERM after USR2 and kill the `scontrol requeue` that USR2's
        # handler has started.)
        for signal_name in ("SIGTERM", "USR2"):
            subprocess.run(
                ["scancel", record["job_id"], "--signal", signal_name], check=True, timeout=30
            )
            time.sleep(1.0)
        assert _finish(driver, out_dir) == 0, out_dir.with_suffix(".log").read_text()[-4000:]
    finally:
        _stop(driver)

    trial = optuna.load_study(
        study_name="preempted", storage=open_storage(f"journal:{out_dir / 'optuna.journal'}")
    ).trials[0]
    assert trial.state.name == "COMPLETE", trial.user_attrs
    assert trial.value == pytest.approx(expected, rel=1e-6, abs=1e-9)

    job_id = record["job_id"]
    _wait_for(
        lambda: (
            [row[1] for row in sacct("-D", "-X", "-j", job_id, "-o", "JobID,State")]
            == ["REQUEUED", "COMPLETED"]
        ),
        30,
        f"sacct to show both runs of job {job_id}",
    )
    _, children = _parent_and_children("preempted")
    assert (
        len(children) == 1 and children["status"].iloc[0] == "FINISHED"
    )  # resumed its run, no second one
    assert children["metrics.final/val_loss"].iloc[0] == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.slurm
def test_scancelled_trial_is_failed_and_the_sweep_goes_on(slurm_cluster, tmp_path, data_root):
    fields = {"overrides": [*FAST, f"data.root={data_root}", *SLOW_TRIAL]}
    path = write_sweep(tmp_path, data_root, "cancelled", launcher="slurm:local", **fields)
    out_dir = tmp_path / "cancelled"
    driver = _start_driver(path, out_dir, tmp_path)
    try:
        _wait_for(
            lambda: _checkpoint_step(out_dir / "trials" / "0000-seed0") >= 2,
            120,
            "trial 0 to be running",
        )
        record = _job_record(out_dir, "0-seed0")
        subprocess.run(["scancel", record["job_id"]], check=True)
        assert _finish(driver, out_dir) == 0, out_dir.with_suffix(".log").read_text()[-4000:]
    finally:
        _stop(driver)

    trials = optuna.load_study(
        study_name="cancelled", storage=open_storage(f"journal:{out_dir / 'optuna.journal'}")
    ).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"], [t.user_attrs for t in trials]
    reason = trials[0].user_attrs.get("fail_reason") or json.dumps(trials[0].user_attrs)
    assert "CANCEL" in reason.upper() or "killed" in reason.lower() or "signal" in reason.lower(), (
        reason
    )

    parent, children = _parent_and_children("cancelled")
    assert parent["status"].iloc[0] == "FINISHED"
    by_trial = dict(zip(children["tags.trial"], children["status"]))
    assert by_trial == {"0": "FAILED", "1": "FINISHED"}, by_trial
    assert children.set_index("tags.trial").loc["0", "tags.error"]


@pytest.mark.slurm
def test_hydra_multirun_on_slurm_with_a_profile(slurm_cluster, tmp_path, data_root):
    """``hydra/launcher=slurm_local``: hydra-submitit-launcher's submitit_slurm with slurm/profiles/local.yaml."""
    uri = f"sqlite:///{tmp_path / 'multirun.db'}"
    sweep_dir = tmp_path / "multirun"
    command = [
        sys.executable,
        "-m",
        "singer.train",
        "-m",
        "frontend=mel,msm",
        "hydra/launcher=slurm_local",
        TINY,
        "trainer.steps=2",
        "trainer.val_every=2",
        "data.synth.clips=4",
        "data.synth.seconds=2",
        f"data.root={data_root}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=dict(os.environ, MLFLOW_TRACKING_URI=uri),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert len(list(sweep_dir.glob("*/checkpoints/last.pt"))) == 2

    # The jobs went through SLURM, with the profile's partition and time limit.
    job_ids = sorted(
        {p.name.split("_")[0] for p in (sweep_dir / ".submitit").iterdir() if p.name[0].isdigit()}
    )
    assert job_ids, list((sweep_dir / ".submitit").iterdir())

    def completed() -> bool:  # accounting may trail the jobs' end by a moment
        rows = sacct("-X", "-j", ",".join(job_ids), "-o", "JobID,State,Partition,Timelimit")
        return len(rows) == 2 and all(r[1:] == ["COMPLETED", "debug", "00:10:00"] for r in rows)

    _wait_for(
        completed, 30, f"sacct to list the array tasks of {job_ids} as COMPLETED in partition debug"
    )
    runs = mlflow.MlflowClient(uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments()]
    )
    assert sorted(r.data.tags.get("frontend") for r in runs) == ["mel", "msm"]
