"""The one module that talks to submitit: executors for ``debug`` | ``local`` | ``slurm:<profile>``.

A *launcher* string says where jobs run:

- ``debug``: in this process, one after the other, when their result is asked for
  (breakpoints work; submitit opens pdb when a job raises);
- ``local``: as subprocesses on this machine, all at once;
- ``slurm:<profile>``: on a SLURM cluster, with the sbatch settings of
  ``slurm/profiles/<profile>.yaml`` (schema in ``slurm/README.md``).

Profiles are looked up first in the folders listed in ``$SINGER_SLURM_PROFILES``
(``os.pathsep``-separated), then in the repository's ``slurm/profiles``.

Jobs that must survive preemption or a time limit subclass :class:`CheckpointableJob`.
:func:`job_states` and :func:`wait` summarise job progress for displays.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from dataclasses import field
from typing import Any

import submitit
import yaml

from singer import schema
from singer.schema import Rule, rule

REPO_PROFILES = Path(__file__).resolve().parent.parent / "slurm" / "profiles"
PROFILES_ENV = "SINGER_SLURM_PROFILES"
LAUNCHERS = ("debug", "local", "slurm:<profile>")

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

# sbatch options a profile may set through ``additional``. Options that submitit sets itself
# (output, error, array, signal, job-name, open-mode, ...) or that have their own profile
# key (partition, time, gpus-per-node, ...) are left out on purpose.
ADDITIONAL_ALLOWED = frozenset(
    {
        "begin",
        "comment",
        "cores_per_socket",
        "cpus_per_gpu",
        "distribution",
        "exclude",
        "exclusive",
        "gpu_bind",
        "gpu_freq",
        "gpus_per_task",
        "gres",
        "hint",
        "licenses",
        "mail_type",
        "mail_user",
        "mem_per_cpu",
        "mem_per_gpu",
        "network",
        "nice",
        "nodelist",
        "prefer",
        "requeue",
        "reservation",
        "sockets_per_node",
        "switches",
        "threads_per_core",
        "wckey",
    }
)


class ProfileError(ValueError):
    """A SLURM profile is missing, misnamed or invalid."""


class LaunchError(ValueError):
    """A launcher spec or executor request cannot be honoured."""


# A one-line value: the sbatch script and its setup lines are written line by line.
_ONE_LINE = re.compile(r"[^\n\r]*\Z")


def _one_line(what: str) -> dict:
    return rule(pattern=_ONE_LINE, nonempty=True, what=what)


@dataclasses.dataclass(frozen=True)
class ProfileSettings:
    """The keys of a profile file (``slurm/profiles/<name>.yaml``), their types and defaults.

    ``time_min`` is the longest time limit a job may request with this profile (usually
    the partition's limit); each job asks for its own ``timeout_min`` up to that.
    ``max_requeue`` is how often a preempted or timed-out job is requeued (submitit's
    ``max_num_timeout``); ``signal_delay_s`` is how long before the time limit USR2 arrives.
    ``None`` means "the cluster's default" (no sbatch option is written).
    """

    description: str | None = ""
    partition: str | None = field(default=None, metadata=_one_line("a one-line string"))
    account: str | None = field(default=None, metadata=_one_line("a one-line string"))
    qos: str | None = field(default=None, metadata=_one_line("a one-line string"))
    nodes: int = field(default=1, metadata=rule(ge=1))
    gpus_per_node: int = field(default=0, metadata=rule(ge=0))
    tasks_per_node: int = field(default=1, metadata=rule(ge=1))
    cpus_per_task: int = field(default=1, metadata=rule(ge=1))
    mem_gb: float | None = field(default=None, metadata=rule(gt=0))
    time_min: int = field(default=60, metadata=rule(ge=1, what="an integer >= 1 (minutes)"))
    constraint: str | None = field(default=None, metadata=_one_line("a one-line string"))
    array_parallelism: int | None = field(default=None, metadata=rule(ge=1))
    setup: list[str] | None = field(
        default=(),
        metadata=rule(item=Rule(pattern=_ONE_LINE), what="a list of one-line shell strings"),
    )
    max_requeue: int = field(default=3, metadata=rule(ge=0))
    signal_delay_s: int = field(default=90, metadata=rule(ge=0, what="an integer >= 0 (seconds)"))
    # Checked against ADDITIONAL_ALLOWED by _check_additional (a domain rule, not a type).
    additional: dict[str, Any] | None = field(
        default_factory=dict, metadata=rule(what="a mapping of sbatch options")
    )


@dataclasses.dataclass(frozen=True)
class SlurmProfile(ProfileSettings):
    """One cluster's sbatch settings: a profile file's :class:`ProfileSettings`, and its name
    and path."""

    name: str = ""
    path: Path = Path()


def _check_additional(path: Path, value: dict[str, Any]) -> dict[str, str | int | bool]:
    """The ``additional`` sbatch options of a profile, each allowed and of a usable value."""
    allowed = ", ".join(sorted(ADDITIONAL_ALLOWED))
    out: dict[str, str | int | bool] = {}
    for raw_key, item in value.items():
        key = str(raw_key).replace("-", "_")
        if key not in ADDITIONAL_ALLOWED:
            raise ProfileError(
                f"{path}: key 'additional.{raw_key}': not an allowed sbatch option; "
                f"allowed options: {allowed}"
            )
        if item is True or (isinstance(item, int) and not isinstance(item, bool) and item >= 0):
            out[key] = item
        elif isinstance(item, str) and item.strip() and "\n" not in item and "\r" not in item:
            out[key] = item.strip()
        else:
            raise ProfileError(
                f"{path}: key 'additional.{raw_key}': got {item!r}; allowed: a one-line string, "
                "an integer >= 0, or true for a flag (remove the key to unset it)"
            )
    return out


def profile_dirs() -> list[Path]:
    """Folders searched for profiles, in order: ``$SINGER_SLURM_PROFILES``, then the repository's."""
    dirs = [Path(p) for p in os.environ.get(PROFILES_ENV, "").split(os.pathsep) if p]
    return [*dirs, REPO_PROFILES]


def available_profiles() -> list[str]:
    """Names of every profile found in :func:`profile_dirs`."""
    names = {p.stem for d in profile_dirs() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(n for n in names if _PLAIN_NAME.match(n))


def _check_profile_name(name: str) -> None:
    if not isinstance(name, str) or not _PLAIN_NAME.match(name):
        raise ProfileError(
            f"SLURM profile name {name!r} is not a plain name (letters, digits, '_' and '-', "
            f"no paths); available profiles: {', '.join(available_profiles()) or 'none'}"
        )


def load_profile(name: str) -> SlurmProfile:
    """Read and validate ``<name>.yaml`` from the first profile folder that has it."""
    _check_profile_name(name)
    dirs = profile_dirs()
    path = next((d / f"{name}.yaml" for d in dirs if (d / f"{name}.yaml").is_file()), None)
    if path is None:
        raise ProfileError(
            f"unknown SLURM profile {name!r}; available: {', '.join(available_profiles()) or 'none'} "
            f"(searched {', '.join(str(d) for d in dirs)}; set ${PROFILES_ENV} to add a folder)"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(
            f"{path}: must be a YAML mapping of profile keys; allowed keys: "
            + ", ".join(f.name for f in dataclasses.fields(ProfileSettings))
        )

    try:
        settings = schema.parse(ProfileSettings, data)
    except schema.SchemaError as err:
        raise ProfileError(f"{path}: {err}") from None
    return SlurmProfile(
        **{
            **vars(settings),
            "setup": tuple(settings.setup),
            "additional": _check_additional(path, settings.additional),
        },
        name=name,
        path=path,
    )


def _is_int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def parse_launcher(spec: str) -> tuple[str, str | None]:
    """``"debug"`` → ``("debug", None)``, ``"local"`` → ``("local", None)``,
    ``"slurm:<profile>"`` → ``("slurm", "<profile>")``; anything else is an error."""
    if not isinstance(spec, str):
        raise LaunchError(f"launcher must be a string, one of {', '.join(LAUNCHERS)}; got {spec!r}")
    spec = spec.strip()
    if spec in ("debug", "local"):
        return spec, None
    if spec == "slurm" or spec.startswith("slurm:"):
        profile = spec[len("slurm:") :].strip() if spec.startswith("slurm:") else ""
        if not profile:
            raise LaunchError(
                f"launcher {spec!r} needs a profile: 'slurm:<profile>'; "
                f"available profiles: {', '.join(available_profiles()) or 'none'}"
            )
        try:
            _check_profile_name(profile)
        except ProfileError as err:
            raise LaunchError(f"launcher {spec!r}: {err}") from None
        return "slurm", profile
    raise LaunchError(f"unknown launcher {spec!r}; use one of: {', '.join(LAUNCHERS)}")


def make_executor(
    launcher: str,
    folder: str | Path,
    *,
    timeout_min: int,
    name: str = "singer",
    cpus_per_task: int | None = None,
    array_parallelism: int | None = None,
    max_requeue: int | None = None,
    tasks_per_node: int | None = None,
) -> submitit.Executor:
    """A submitit executor for ``launcher`` writing its job files under ``folder``.

    ``timeout_min`` is each job's time limit (always set: submitit's own defaults are a few
    minutes). For ``slurm:<profile>`` it may not exceed the profile's ``time_min``;
    ``cpus_per_task``, ``array_parallelism``, ``max_requeue`` and ``tasks_per_node`` override
    the profile's. ``local`` honours only ``timeout_min``, ``name``, ``max_requeue`` and
    ``tasks_per_node`` (N processes per job on this machine, e.g. N CPU ranks for DDP);
    ``debug`` runs in-process, one task, and ignores limits. Use a fresh ``folder`` per sweep:
    SLURM job ids restart when a cluster is rebuilt, and a reused folder would then return
    stale results.
    """
    kind, profile_name = parse_launcher(launcher)
    if not _is_int_at_least(timeout_min, 1):
        raise LaunchError(f"timeout_min must be an integer >= 1 (minutes); got {timeout_min!r}")
    for key, value, low in (
        ("cpus_per_task", cpus_per_task, 1),
        ("array_parallelism", array_parallelism, 1),
        ("max_requeue", max_requeue, 0),
        ("tasks_per_node", tasks_per_node, 1),
    ):
        if value is not None and not _is_int_at_least(value, low):
            raise LaunchError(f"{key} must be an integer >= {low} or None; got {value!r}")
    folder = Path(folder)

    # The cluster is always named: AutoExecutor would pick SLURM by itself whenever srun is on PATH.
    if kind == "debug":
        executor = submitit.AutoExecutor(folder, cluster="debug")
        executor.update_parameters(timeout_min=timeout_min, name=name)
        return executor
    if kind == "local":
        extra = {} if max_requeue is None else {"local_max_num_timeout": max_requeue}
        executor = submitit.AutoExecutor(folder, cluster="local", **extra)
        executor.update_parameters(
            timeout_min=timeout_min, name=name, tasks_per_node=tasks_per_node or 1
        )
        return executor

    profile = load_profile(profile_name)
    if timeout_min > profile.time_min:
        raise LaunchError(
            f"timeout_min={timeout_min} exceeds the time_min={profile.time_min} of SLURM profile "
            f"{profile.name!r} ({profile.path}); ask for less or raise time_min there"
        )
    if profile.signal_delay_s >= timeout_min * 60:
        raise LaunchError(
            f"timeout_min={timeout_min} leaves no time before the preemption signal: profile "
            f"{profile.name!r} sends USR2 {profile.signal_delay_s} s before the limit ({profile.path})"
        )
    try:
        executor = submitit.AutoExecutor(
            folder,
            cluster="slurm",
            slurm_max_num_timeout=profile.max_requeue if max_requeue is None else max_requeue,
        )
    except RuntimeError as err:
        raise LaunchError(
            f"launcher {launcher!r} needs the SLURM client commands (srun, sbatch, sacct) on PATH "
            f"and SLURM_CONF pointing at a cluster ({err})"
        ) from err
    params: dict[str, Any] = {
        "timeout_min": timeout_min,
        "name": name,
        "nodes": profile.nodes,
        "tasks_per_node": tasks_per_node or profile.tasks_per_node,
        "cpus_per_task": cpus_per_task or profile.cpus_per_task,
        "mem_gb": profile.mem_gb,
        "slurm_partition": profile.partition,
        "slurm_account": profile.account,
        "slurm_qos": profile.qos,
        "slurm_constraint": profile.constraint,
        "slurm_array_parallelism": array_parallelism or profile.array_parallelism,
        "slurm_setup": list(profile.setup) or None,
        "slurm_signal_delay_s": profile.signal_delay_s,
        "slurm_additional_parameters": dict(profile.additional) or None,
    }
    if profile.gpus_per_node:  # "--gpus-per-node=0" is rejected by clusters without GPUs
        params["gpus_per_node"] = profile.gpus_per_node
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


class CheckpointableJob:
    """Base class for job callables that survive preemption and time limits.

    Contract for subclasses:

    - ``__call__(*args, **kwargs)`` does the work and returns the result. It keeps its
      progress in files it owns (for example under a folder given as an argument), saves
      them often enough and atomically (write a temporary file, then ``os.replace``), and
      on every start resumes from what was saved.
    - A restart must give the same result as an uninterrupted run.
    - Instances must pickle (plain attributes): submitit pickles the object again when it
      checkpoints.

    When SLURM is about to stop the job (USR2 ``signal_delay_s`` before the time limit, or
    on preemption), submitit calls :meth:`checkpoint`; the returned submission (this same
    object with the same arguments) is requeued, at most ``max_requeue`` times, and
    ``__call__`` runs again from the top. For multi-task jobs only rank 0 checkpoints.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(self.resumed(), *args, **kwargs)

    def resumed(self) -> CheckpointableJob:
        """The job requeued in place of this one: this same object by default; a job that
        keeps a ``resume`` flag returns a copy with it set."""
        return self


# -- distributed training in submitit jobs ------------------------------------------------------
def export_torch_distributed_env() -> bool:
    """Inside a submitit job with several tasks, export the ``env://`` variables of
    ``torch.distributed`` (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``) from submitit's job environment; returns whether it did.

    Outside a submitit job, in a one-task job, or when ``RANK`` and ``WORLD_SIZE`` are already
    set (torchrun inside a one-task job), nothing is changed. ``CUDA_VISIBLE_DEVICES`` is left
    alone: each rank picks ``cuda:<local rank>`` itself (:mod:`singer.distributed`). The master
    port is derived from the job id unless ``MASTER_PORT`` is set (e.g. in a profile's setup lines).
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return False
    try:
        job_env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job
        return False
    if job_env.num_tasks <= 1:
        return False
    submitit.helpers.TorchDistributedEnvironment().export(
        set_cuda_visible_devices=False, overwrite=True
    )
    return True


@dataclasses.dataclass
class TrainJob(CheckpointableJob):
    """``python -m singer.train <overrides> out_dir=<out_dir>`` as a submitit job.

    With several tasks per job (``tasks_per_node`` in the profile, e.g. ``slurm:gpu8_ddp``, or
    ``make_executor("local", ..., tasks_per_node=2)`` for CPU ranks), every task runs this and
    the trainer joins them into one DistributedDataParallel run. On preemption or at the time
    limit the job requeues itself with ``trainer.resume=true`` and continues from its last
    checkpoint. Returns the result summary (``result.json``) on rank 0 and ``None`` elsewhere.
    """

    overrides: list[str]
    out_dir: str
    resume: bool = False

    def resumed(self) -> TrainJob:
        return dataclasses.replace(self, resume=True)

    def __call__(self) -> dict | None:
        # lazy: start-up time; submitting needs neither torch nor the trainer, the job does
        from singer.config import compose
        from singer.trainer import Trainer

        export_torch_distributed_env()  # a multi-task job trains one DDP run
        cfg = compose([*self.overrides, *(["trainer.resume=true"] if self.resume else [])])
        trainer = Trainer(cfg, self.out_dir, progress=False)
        trainer.fit()
        if not trainer.dist_env.is_main:
            return None
        return json.loads((trainer.out_dir / "result.json").read_text())


STATES = ("queued", "running", "done", "failed")
_QUEUED = {
    "QUEUED",
    "PENDING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "READY",
    "CONFIGURING",
    "RESIZING",
    "SUSPENDED",
    "PREEMPTED",
    "UNKNOWN",
    "RESV_DEL_HOLD",
}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


def _results_written(job: submitit.Job) -> bool:
    tasks = [job] if job.num_tasks == 1 else [job.task(i) for i in range(job.num_tasks)]
    return all(t.paths.result_pickle.exists() for t in tasks)


def attach_job(kind: str, folder: str | Path, job_id: str) -> submitit.Job:
    """A job submitted earlier (``kind`` ``local`` or ``slurm``), found by its folder and id,
    to watch after the submitting process restarted."""
    if kind == "local":
        return submitit.LocalJob(folder, job_id)
    if kind == "slurm":
        return submitit.SlurmJob(folder, job_id)
    raise LaunchError(
        f"cannot re-attach a {kind!r} job; only local and slurm jobs outlive their driver"
    )


def runs_here(job: submitit.Job) -> bool:
    """Whether ``job`` is a debug job, which runs in this process when its result is asked for."""
    return isinstance(job, submitit.DebugJob)


def job_state(job: submitit.Job) -> str:
    """One of ``queued``, ``running``, ``done`` (returned a result) or ``failed`` (raised,
    was cancelled, or ended without a result). Never blocks.

    Debug jobs are not run here; one that raised still reads ``queued``, since submitit
    keeps no record of the failure (:func:`wait` runs debug jobs and counts those).
    """
    if isinstance(job, submitit.DebugJob):
        state = job.state
        if state == "DONE":
            return "failed" if job.exception() is not None else "done"
        return "failed" if state == "CANCELLED" else "queued"
    if _results_written(job):
        return "failed" if job.exception() is not None else "done"
    state = (job.state or "UNKNOWN").split()[0].upper()  # e.g. "CANCELLED by 0"
    if state in _RUNNING:
        return "running"
    if state in _QUEUED:
        return "queued"
    # Ended. The result file may have appeared since the first look.
    if _results_written(job):
        return "failed" if job.exception() is not None else "done"
    return "failed"


def job_states(jobs: Iterable[submitit.Job], *, refresh: bool = False) -> dict[str, int]:
    """Count jobs per state: ``{"queued": n, "running": n, "done": n, "failed": n}``.

    ``refresh=True`` first asks SLURM (one ``sacct`` call for all jobs) instead of using
    submitit's cached view, which it refreshes at most every few minutes for old jobs.
    """
    return _count(list(jobs), refresh=refresh, failed_debug=set())


def _count(jobs: list[submitit.Job], *, refresh: bool, failed_debug: set[int]) -> dict[str, int]:
    if refresh and any(isinstance(j, submitit.SlurmJob) for j in jobs):
        submitit.SlurmJob.watcher.update()
    counts = dict.fromkeys(STATES, 0)
    for job in jobs:
        counts["failed" if id(job) in failed_debug else job_state(job)] += 1
    return counts


def wait(
    jobs: Sequence[submitit.Job],
    poll_s: float = 5.0,
    *,
    timeout_s: float | None = None,
    on_progress: Callable[[dict[str, int]], None] | None = None,
) -> dict[str, int]:
    """Poll until every job is done or failed; returns the final :func:`job_states` counts.

    ``on_progress`` gets the counts after each poll (for a progress display). Each poll makes
    one ``sacct`` call for all SLURM jobs, so keep ``poll_s`` in seconds-to-minutes on a
    shared cluster. Debug jobs run here, in this process. Raises ``TimeoutError`` after
    ``timeout_s`` seconds.
    """
    jobs = list(jobs)
    failed_debug: set[int] = set()
    for job in jobs:
        if isinstance(job, submitit.DebugJob):
            try:
                job.result()
            except Exception:  # submitit keeps no record of it: count it here
                failed_debug.add(id(job))
    start = time.monotonic()
    while True:
        counts = _count(jobs, refresh=True, failed_debug=failed_debug)
        if on_progress is not None:
            on_progress(counts)
        if counts["done"] + counts["failed"] == len(jobs):
            return counts
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"jobs still unfinished after {timeout_s:.0f} s: {counts}")
        time.sleep(poll_s)


# -- hydra-submitit-launcher ------------------------------------------------------------------
HYDRA_LAUNCHER_PREFIX = "slurm_"


def hydra_launcher_settings(profile: SlurmProfile) -> dict[str, Any]:
    """A profile as hydra-submitit-launcher's ``submitit_slurm`` settings (``hydra.launcher.*``).

    Shell variables in setup lines (``${SLURM_CPUS_PER_TASK}``) are escaped, or Hydra would
    read them as its own interpolations.
    """

    def literal(value: Any) -> Any:
        return value.replace("${", "\\${") if isinstance(value, str) else value

    settings: dict[str, Any] = {
        "timeout_min": profile.time_min,
        "nodes": profile.nodes,
        "tasks_per_node": profile.tasks_per_node,
        "cpus_per_task": profile.cpus_per_task,
        "gpus_per_node": profile.gpus_per_node or None,  # "--gpus-per-node=0" fails without GPUs
        "mem_gb": None if profile.mem_gb is None else max(1, round(profile.mem_gb)),
        "partition": profile.partition,
        "account": profile.account,
        "qos": profile.qos,
        "constraint": profile.constraint,
        "array_parallelism": profile.array_parallelism or 256,
        "setup": [literal(line) for line in profile.setup] or None,
        "signal_delay_s": profile.signal_delay_s,
        "max_num_timeout": profile.max_requeue,
        "additional_parameters": {k: literal(v) for k, v in profile.additional.items()},
    }
    return settings


def register_hydra_launchers() -> list[str]:
    """Offer every SLURM profile to Hydra as ``hydra/launcher=slurm_<profile>``.

    The entries are ``submitit_slurm`` with the profile's settings, so a multirun such as
    ``python -m singer.train -m frontend=mel,msm hydra/launcher=slurm_gpu1`` asks SLURM for what
    the profile says; any ``hydra.launcher.<key>=...`` override still wins. A profile that does
    not load is left out here (``load_profile`` explains why when it is used by name).
    """
    # lazy: start-up time; only singer.train, which runs Hydra anyway, registers launchers
    from hydra.core.config_store import ConfigStore
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    store, names = ConfigStore.instance(), []
    for name in available_profiles():
        try:
            profile = load_profile(name)
        except ProfileError:
            continue
        node = SlurmQueueConf(**hydra_launcher_settings(profile))
        store.store(
            group="hydra/launcher",
            name=f"{HYDRA_LAUNCHER_PREFIX}{name}",
            node=node,
            provider="singer",
        )
        names.append(f"{HYDRA_LAUNCHER_PREFIX}{name}")
    return names
