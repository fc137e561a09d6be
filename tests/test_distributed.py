"""DistributedDataParallel on CPU: 2 ranks (gloo) through torchrun and the real trainer.

Run as a script, this file is the per-rank worker that the DDP test starts with torchrun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny
from singer import distributed
from singer.data.batches import BatchStream

# A very small SINGER: the point is the distributed code path, not the model.
TINY = [
    tiny.TINY,
    "trainer.batch_size=2",
    "trainer.num_frames=4",
    "trainer.val_batches=1",
    "trainer.log_every=1",
    "frontend=mel",
    "backbone.channels=[16,32]",
    "data.synth.clips=6",
]


# -- pure pieces ----------------------------------------------------------------------------------
def test_batch_stream_shards_are_disjoint_and_cover_the_global_batch():
    single = iter(BatchStream(11, 6, seed=3))
    ranks = [iter(BatchStream(11, 2, seed=3, rank=r, world_size=3)) for r in range(3)]
    for _ in range(7):  # crosses several epochs of 11 items
        expected = next(single)
        shards = [next(r) for r in ranks]
        assert all(len(s) == 2 for s in shards)
        assert sorted(sum(shards, [])) == sorted(expected)
        assert [
            shards[r][k] for k in range(2) for r in range(3)
        ] == expected  # interleaved, DistributedSampler-style


def test_batch_stream_resumes_per_rank():
    full = iter(BatchStream(9, 2, seed=1, rank=1, world_size=2))
    batches = [next(full) for _ in range(6)]
    resumed = iter(BatchStream(9, 2, seed=1, start_batch=4, rank=1, world_size=2))
    assert [next(resumed), next(resumed)] == batches[4:]
    with pytest.raises(ValueError, match="outside a world"):
        BatchStream(9, 2, seed=1, rank=2, world_size=2)


def test_rank_seeds_differ_and_rank0_keeps_the_seed():
    assert distributed.rank_seed(7, 0) == 7
    seeds = {distributed.rank_seed(7, r) for r in range(8)}
    assert len(seeds) == 8
    # per-rank streams never coincide with the trainer's own small seed offsets
    assert not seeds & {7 + k for k in range(1, 20_000)}


def test_env_parsing():
    assert distributed.from_env({}) == distributed.DistEnv()
    assert not distributed.from_env({"RANK": "0", "WORLD_SIZE": "1"}).enabled
    env = distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.enabled, env.is_main) == (
        3,
        4,
        1,
        True,
        False,
    )
    with pytest.raises(RuntimeError, match="inconsistent"):
        distributed.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"
    assert distributed.device_for(env, torch.device("cpu")) == torch.device("cpu")


def test_one_process_needs_no_process_group():
    env = distributed.DistEnv()
    assert distributed.init(env, torch.device("cpu")) is False
    value = torch.tensor(2.5)
    assert distributed.mean(value, env) is value
    assert distributed.gather_objects("x", env) == ["x"]
    assert distributed.broadcast_object({"a": 1}, env) == {"a": 1}
    assert distributed.on_main(lambda: 5, env) == 5
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap(module, env, torch.device("cpu")) is module


# -- two real ranks -------------------------------------------------------------------------------
def _torchrun(
    tmp_path: Path, out_dir: Path, overrides: list[str], nproc: int = 2
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for key in distributed.ENV_KEYS:  # a clean world, whatever the calling shell had
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        __file__,
        str(out_dir),
        str(tmp_path),
        *overrides,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def test_two_cpu_ranks_train_to_identical_weights_and_only_rank0_writes(tmp_path):
    import mlflow

    data_root = tmp_path / "data"
    from singer.config import compose
    from singer.data.batches import build_datasets

    build_datasets(
        compose([*TINY, f"data.root={data_root}"])
    )  # generate SynthSing once, before the ranks start
    out_dir = tmp_path / "run"
    proc = _torchrun(
        tmp_path,
        out_dir,
        [
            *TINY,
            f"data.root={data_root}",
            "trainer.steps=3",
            "trainer.val_every=3",
            "trainer.ckpt_every=2",
            "tracking.experiment=t-ddp",
        ],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    # the same weights on both ranks after the steps, and they did change
    assert weights[0].keys() == weights[1].keys()
    differing = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert not differing, f"{len(differing)} tensors differ between ranks, e.g. {differing[:3]}"
    saved = torch.load(out_dir / "checkpoints" / "last.pt", weights_only=True)
    assert saved["step"] == 3
    assert all(torch.equal(saved["model"][k], weights[0][k]) for k in weights[0])
    assert reports[0]["initial_weights_sum"] != reports[0]["weights_sum"]

    # each rank drew its own noise and data; the losses (averaged over ranks) agree
    assert reports[0]["noise_seed"] != reports[1]["noise_seed"]
    assert reports[0]["world"] == reports[1]["world"] == [2, "env"]
    assert [r["result_rank"] for r in reports] == [
        0,
        1,
    ]  # singer.train prints its summary on rank 0 only
    assert reports[0]["losses"] == reports[1]["losses"] and len(reports[0]["losses"]) == 3
    assert set(reports[0]["first_batch"]).isdisjoint(reports[1]["first_batch"])
    # the checkpoint carries every rank's random streams, for an exact resume
    assert len(saved["rank_rng"]) == 2
    assert not torch.equal(saved["rank_rng"][0]["noise_gen"], saved["rank_rng"][1]["noise_gen"])

    # side effects on rank 0 only: checkpoints, files in out_dir, the MLflow run
    assert reports[0]["file_writes"] and not reports[1]["file_writes"], reports
    assert any("checkpoints" in p for p in reports[0]["file_writes"])
    assert reports[0]["mlflow_calls"] >= 1 and reports[1]["mlflow_calls"] == 0
    runs = mlflow.search_runs(experiment_names=["t-ddp"])
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    assert runs.iloc[0]["run_id"] == reports[0]["run_id"] and reports[1]["run_id"] is None
    assert (out_dir / "result.json").exists() and json.loads((out_dir / "result.json").read_text())[
        "world_size"
    ] == 2


@pytest.mark.slow
def test_submitit_job_with_two_tasks_trains_one_ddp_run(tmp_path):
    """The submitit path: a local job with tasks_per_node=2 runs launch.TrainJob on 2 ranks,
    which find each other through submitit's job environment."""
    import mlflow

    from singer import launch

    overrides = [
        *TINY,
        f"data.root={tmp_path / 'data'}",
        "trainer.steps=2",
        "trainer.val_every=2",
        "tracking.experiment=t-ddp-submitit",
    ]
    executor = launch.make_executor("local", tmp_path / "jobs", timeout_min=5, tasks_per_node=2)
    job = executor.submit(launch.TrainJob(overrides, str(tmp_path / "run")))
    main, other = job.results()
    assert other is None
    assert main["step"] == 2 and main["world_size"] == 2
    runs = mlflow.search_runs(experiment_names=["t-ddp-submitit"])
    assert list(runs["run_id"]) == [main["run_id"]] and runs.iloc[0]["status"] == "FINISHED"
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["step"] == 2 and len(saved["rank_rng"]) == 2


# -- the per-rank worker (run by torchrun) ---------------------------------------------------------
def _worker(out_dir: str, report_dir: str, overrides: list[str]) -> None:
    """Train through the real trainer; record what this rank wrote and its final weights."""
    import pathlib

    from singer import tracking
    from singer.config import compose
    from singer.data.batches import build_datasets
    from singer.trainer import Trainer

    rank = int(os.environ["RANK"])
    writes: list[str] = []
    mlflow_calls = [0]
    real_save, real_write_text = torch.save, pathlib.Path.write_text

    def recording_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):  # not the in-memory pickling of collectives
            writes.append(str(f))
        return real_save(obj, f, *args, **kwargs)

    def recording_write_text(self, *args, **kwargs):
        writes.append(str(self))
        return real_write_text(self, *args, **kwargs)

    def counting(fn):
        def wrapper(*args, **kwargs):
            mlflow_calls[0] += 1
            return fn(*args, **kwargs)

        return wrapper

    torch.save, pathlib.Path.write_text = recording_save, recording_write_text
    tracking.start_run, tracking.resume_run = (
        counting(tracking.start_run),
        counting(tracking.resume_run),
    )

    trainer = Trainer(compose(overrides), out_dir, progress=False)
    report: dict = {}
    real_setup = trainer._setup

    def setup():
        real_setup()
        report["initial_weights_sum"] = float(
            sum(p.double().sum() for p in trainer.model.parameters())
        )

    trainer._setup = setup
    result = trainer.fit()
    torch.save, pathlib.Path.write_text = real_save, real_write_text

    env = trainer.dist_env
    num_items = len(build_datasets(trainer.cfg)[0])
    first_batch = next(
        iter(
            BatchStream(
                num_items,
                trainer.tc.batch_size,
                trainer.cfg.seed,
                rank=env.rank,
                world_size=env.world_size,
            )
        )
    )
    state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    torch.save(state, Path(report_dir) / f"rank{rank}.pt")
    report.update(
        {
            "losses": result.losses,
            "run_id": result.run_id,
            "file_writes": writes,
            "mlflow_calls": mlflow_calls[0],
            "noise_seed": trainer.noise_gen.initial_seed(),
            "first_batch": first_batch,
            "world": [trainer.dist_env.world_size, trainer.dist_env.source],
            "result_rank": result.rank,
            "weights_sum": float(sum(p.double().sum() for p in trainer.model.parameters())),
        }
    )
    (Path(report_dir) / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], sys.argv[3:])
