"""Jobs on a real one-node SLURM cluster (slurm/local), through singer.launch.

The cluster comes from the session fixture in slurm_fixture.py: it skips without root or
when the install fails, unless SINGER_REQUIRE_SLURM=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from singer import launch
from singer.launch import CheckpointableJob

from slurm_fixture import sacct as _sacct

pytestmark = pytest.mark.slurm

# Job processes cannot import this test module; ship its objects to them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class StepSum(CheckpointableJob):
    """Sums i*i for i < steps, one step every `delay` s, saving progress after each step;
    counts its starts in the state file so the test can tell a resume from a restart."""

    def __call__(self, state_file: str, steps: int, delay: float) -> int:
        path = Path(state_file)
        state = json.loads(path.read_text()) if path.exists() else {"i": 0, "total": 0, "starts": 0}
        state["starts"] += 1
        while True:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, path)
            if state["i"] >= steps:
                return state["total"]
            time.sleep(delay)
            state["total"] += state["i"] ** 2
            state["i"] += 1


def _touch_and_sleep(marker: str, seconds: float) -> str:
    Path(marker).touch()
    time.sleep(seconds)
    return "slept"


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def test_array_runs_and_is_accounted(slurm_cluster, tmp_path):
    executor = launch.make_executor("slurm:local", tmp_path / "jobs", timeout_min=5, name="array")
    jobs = executor.map_array(pow, [2, 3], [10, 4])
    assert [job.result() for job in jobs] == [1024, 81]
    assert launch.job_states(jobs, refresh=True)["done"] == 2

    array_id = jobs[0].job_id.split("_")[0]
    assert {job.job_id for job in jobs} == {f"{array_id}_0", f"{array_id}_1"}

    def both_completed() -> bool:
        rows = _sacct("-X", "-j", array_id, "-o", "JobID,State")
        return sorted(rows) == [[f"{array_id}_0", "COMPLETED"], [f"{array_id}_1", "COMPLETED"]]

    _wait_for(both_completed, 20, f"sacct to list {array_id}_0 and {array_id}_1 as COMPLETED")


def test_cancelled_job_is_reported_failed(slurm_cluster, tmp_path):
    """With accounting, submitit sees a job killed by scancel and result() raises, not hangs."""
    executor = launch.make_executor("slurm:local", tmp_path / "jobs", timeout_min=5)
    marker = tmp_path / "started"
    job = executor.submit(_touch_and_sleep, str(marker), 300)
    _wait_for(marker.exists, 60, "the job to start")
    subprocess.run(["scancel", job.job_id], check=True)

    counts = launch.wait([job], poll_s=0.5, timeout_s=30)
    assert counts == {"queued": 0, "running": 0, "done": 0, "failed": 1}
    assert job.state.startswith("CANCELLED")
    # submitit gives a late result file 15 s to appear before it raises.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        outcome = pool.submit(job.result)
        with pytest.raises(Exception, match="has not produced any output"):
            outcome.result(timeout=60)


def test_preempted_checkpointable_job_requeues_and_resumes(slurm_cluster, tmp_path):
    steps = 12
    expected = StepSum()(str(tmp_path / "reference.json"), steps, 0.0)  # uninterrupted, in process

    state = tmp_path / "state.json"
    executor = launch.make_executor("slurm:local", tmp_path / "jobs", timeout_min=5)
    job = executor.submit(StepSum(), str(state), steps, 0.25)

    def progressed() -> bool:
        return state.exists() and json.loads(state.read_text())["i"] >= 3

    _wait_for(progressed, 60, "the job to make progress")
    # Preemption as SLURM does it: SIGTERM, then after a grace time USR2 to the job's tasks (sent
    # at once, as job._interrupt() does, SIGTERM can arrive after USR2 and kill the requeue)
    for signal_name in ("SIGTERM", "USR2"):
        subprocess.run(["scancel", job.job_id, "--signal", signal_name], check=True, timeout=30)
        time.sleep(1.0)

    counts = launch.wait([job], poll_s=0.5, timeout_s=90)
    assert counts["done"] == 1, job.stderr()
    assert job.result() == expected
    final = json.loads(state.read_text())
    assert final["starts"] == 2 and final["i"] == steps

    # Accounting records both runs (it may trail the job's end by a moment).
    def history() -> list[str]:
        return [row[1] for row in _sacct("-D", "-X", "-j", job.job_id, "-o", "JobID,State")]

    _wait_for(
        lambda: history() == ["REQUEUED", "COMPLETED"],
        20,
        f"sacct to show the runs of {job.job_id}",
    )
