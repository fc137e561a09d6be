"""singer.launch: launcher parsing, SLURM profiles, and real debug/local submitit executors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from singer import launch
from singer.launch import CheckpointableJob, LaunchError, ProfileError

# Job processes cannot import this test module; ship its objects to them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SHIPPED = ("gpu1", "gpu8_ddp", "local")


class SquareSum(CheckpointableJob):
    """Sums i*i for i < steps, one step every `delay` s, saving progress after each step.

    The state file also records how many times the job started and its PID, so a test can
    signal it and check that it resumed rather than restarted.
    """

    def __call__(self, state_file: str, steps: int, delay: float) -> int:
        path = Path(state_file)
        state = json.loads(path.read_text()) if path.exists() else {"i": 0, "total": 0, "starts": 0}
        state["starts"] += 1
        state["pid"] = os.getpid()
        while True:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, path)  # atomic: an interruption never leaves a torn state file
            if state["i"] >= steps:
                return state["total"]
            time.sleep(delay)
            state["total"] += state["i"] ** 2
            state["i"] += 1


def _read_state(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


# ---- parse_launcher ------------------------------------------------------------------


def test_parse_launcher_accepts_the_three_forms():
    assert launch.parse_launcher("debug") == ("debug", None)
    assert launch.parse_launcher("local") == ("local", None)
    assert launch.parse_launcher("slurm:gpu1") == ("slurm", "gpu1")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cluster", "unknown launcher 'cluster'; use one of: debug, local, slurm:<profile>"),
        ("", "unknown launcher ''"),
        ("slurm", "needs a profile: 'slurm:<profile>'; available profiles: gpu1, gpu8_ddp, local"),
        ("slurm:", "needs a profile"),
        ("slurm:../etc/passwd", "is not a plain name"),
        ("slurm:a/b", "is not a plain name"),
    ],
)
def test_parse_launcher_errors(spec, message):
    with pytest.raises(LaunchError) as info:
        launch.parse_launcher(spec)
    assert message in str(info.value)


# ---- profiles ------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load(name):
    profile = launch.load_profile(name)
    assert profile.name == name
    assert profile.path == launch.REPO_PROFILES / f"{name}.yaml"
    assert profile.time_min >= 1 and profile.tasks_per_node >= 1


def test_shipped_profile_values():
    local = launch.load_profile("local")
    assert (local.partition, local.gpus_per_node, local.cpus_per_task) == ("debug", 0, 1)
    assert launch.load_profile("gpu1").gpus_per_node == 1
    ddp = launch.load_profile("gpu8_ddp")
    assert (ddp.nodes, ddp.gpus_per_node, ddp.tasks_per_node) == (1, 8, 8)
    assert ddp.additional == {"exclusive": True}


@pytest.fixture
def profile_dir(tmp_path, monkeypatch):
    folder = tmp_path / "profiles"
    folder.mkdir()
    monkeypatch.setenv(launch.PROFILES_ENV, str(folder))
    return folder


def test_profile_from_env_folder_wins(profile_dir):
    (profile_dir / "local.yaml").write_text("partition: mine\ntime_min: 5\n")
    (profile_dir / "extra.yaml").write_text("gpus_per_node: 2\n")
    assert launch.load_profile("local").partition == "mine"
    extra = launch.load_profile("extra")
    assert (extra.gpus_per_node, extra.time_min, extra.path) == (2, 60, profile_dir / "extra.yaml")
    assert "extra" in launch.available_profiles()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "partition: gpu\ngpus: 2\n",
            ["key 'gpus': unknown key", "allowed: description, partition"],
        ),
        ("gpus_per_node: two\n", ["key 'gpus_per_node': got 'two'", "allowed: an integer >= 0"]),
        ("time_min: 0\n", ["key 'time_min': got 0", "allowed: an integer >= 1 (minutes)"]),
        ("nodes: true\n", ["key 'nodes': got True", "allowed: an integer >= 1"]),
        ("mem_gb: -1\n", ["key 'mem_gb': got -1", "allowed: a number > 0 or null"]),
        ("setup: module load x\n", ["key 'setup'", "allowed: a list of one-line shell strings"]),
        ('partition: "a\\nb"\n', ["key 'partition'", "allowed: a one-line string or null"]),
        (
            "additional:\n  output: /tmp/x\n",
            ["key 'additional.output': not an allowed sbatch option", "exclusive"],
        ),
        (
            "additional:\n  exclusive: false\n",
            ["key 'additional.exclusive': got False", "true for a flag"],
        ),
        ("- a\n- b\n", ["must be a YAML mapping"]),
        ("partition: [\n", ["not valid YAML"]),
    ],
)
def test_bad_profile_errors_name_file_key_and_allowed(profile_dir, text, expected):
    path = profile_dir / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        launch.load_profile("bad")
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message


@pytest.mark.parametrize("name", ["../local", "a/b", "/etc/passwd", "", ".hidden", "local.yaml"])
def test_path_like_profile_names_are_rejected(name):
    with pytest.raises(ProfileError, match="is not a plain name"):
        launch.load_profile(name)


def test_unknown_profile_lists_available():
    with pytest.raises(ProfileError) as info:
        launch.load_profile("nope")
    assert "unknown SLURM profile 'nope'; available: gpu1, gpu8_ddp, local" in str(info.value)


# ---- make_executor -------------------------------------------------------------------


def test_make_executor_rejects_bad_arguments(tmp_path):
    with pytest.raises(LaunchError, match="timeout_min must be an integer >= 1"):
        launch.make_executor("local", tmp_path, timeout_min=0)
    with pytest.raises(LaunchError, match="timeout_min must be an integer >= 1"):
        launch.make_executor("local", tmp_path, timeout_min=1.5)
    with pytest.raises(LaunchError, match="unknown launcher"):
        launch.make_executor("cloud", tmp_path, timeout_min=1)
    with pytest.raises(
        LaunchError, match=r"timeout_min=11 exceeds the time_min=10 of SLURM profile 'local'"
    ):
        launch.make_executor("slurm:local", tmp_path, timeout_min=11)


def test_debug_executor_runs_in_process(tmp_path):
    executor = launch.make_executor("debug", tmp_path / "jobs", timeout_min=1)
    job = executor.submit(pow, 3, 4)
    assert launch.job_state(job) == "queued"  # debug jobs run only when asked for
    assert job.result() == 81
    assert launch.job_states([job]) == {"queued": 0, "running": 0, "done": 1, "failed": 0}


def test_local_executor_runs_a_function(tmp_path):
    executor = launch.make_executor("local", tmp_path / "jobs", timeout_min=1)
    jobs = executor.map_array(divmod, [17, 9], [5, 0])
    counts = launch.wait(jobs, poll_s=0.2, timeout_s=60)
    assert counts == {"queued": 0, "running": 0, "done": 1, "failed": 1}
    assert jobs[0].result() == (3, 2)
    with pytest.raises(Exception, match="ZeroDivisionError"):
        jobs[1].result()


def test_local_checkpointable_job_requeues_and_resumes(tmp_path):
    """A preempted CheckpointableJob is requeued and resumes from its own state file.

    submitit's LocalJob._interrupt() signals the local *controller* process, which has no
    USR2 handler and dies while the task runs on, unsignalled (so nothing requeues). SLURM
    signals the task itself, so this test does the same: USR2 to the task's PID. The same
    preemption through job._interrupt() on SLURM is in tests/test_slurm_local.py.
    """
    steps = 15
    reference_state = tmp_path / "reference.json"
    expected = SquareSum()(str(reference_state), steps, 0.0)  # uninterrupted run, in process
    assert expected == sum(i * i for i in range(steps))

    state = tmp_path / "state.json"
    executor = launch.make_executor("local", tmp_path / "jobs", timeout_min=2, max_requeue=2)
    job = executor.submit(SquareSum(), str(state), steps, 0.2)
    _wait_for(lambda: _read_state(state).get("i", 0) >= 3, 60, "the job to make progress")
    os.kill(_read_state(state)["pid"], signal.SIGUSR2)

    counts = launch.wait([job], poll_s=0.2, timeout_s=90)
    assert counts["done"] == 1, job.stderr()
    assert job.result() == expected
    final = _read_state(state)
    assert final["starts"] == 2, "the job should have been requeued exactly once"
    assert final["i"] == steps
    assert "Requeued job" in job.stdout()


@pytest.mark.skipif(
    shutil.which("srun") is None, reason="needs the SLURM client commands (slurm/local/install.sh)"
)
def test_slurm_profile_maps_to_sbatch_options(tmp_path):
    """The 8-GPU DDP profile becomes the expected #SBATCH lines (nothing is submitted)."""
    executor = launch.make_executor(
        "slurm:gpu8_ddp", tmp_path, timeout_min=600, name="ddp", cpus_per_task=4
    )
    slurm = executor._executor
    assert slurm.max_num_timeout == 5
    script = slurm._make_submission_file_text("true", "uid")
    for line in [
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --nodes=1",
        "#SBATCH --mem=480GB",
        "#SBATCH --time=600",
        "#SBATCH --job-name=ddp",
        "#SBATCH --signal=USR2@300",
        "#SBATCH --exclusive",
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
    ]:
        assert line in script.splitlines(), f"missing {line!r} in:\n{script}"
    assert "--account" not in script and "--qos" not in script


def test_slurm_profiles_are_offered_to_hydra_as_launchers():
    from singer.config import compose as _compose  # noqa: F401  (Hydra is importable)
    from hydra import compose, initialize_config_module

    names = launch.register_hydra_launchers()
    assert {"slurm_local", "slurm_gpu1", "slurm_gpu8_ddp"} <= set(names)
    with initialize_config_module("singer.conf", version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm_gpu1"], return_hydra_config=True)
    settings = cfg.hydra.launcher
    profile = launch.load_profile("gpu1")
    assert settings._target_.endswith("SlurmLauncher")
    assert (
        settings.partition,
        settings.gpus_per_node,
        settings.cpus_per_task,
        settings.timeout_min,
    ) == (profile.partition, profile.gpus_per_node, profile.cpus_per_task, profile.time_min)
    assert settings.max_num_timeout == profile.max_requeue and list(settings.setup) == list(
        profile.setup
    )
