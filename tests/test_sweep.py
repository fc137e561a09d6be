"""Sweeps: file validation, dry runs, and real sweeps on tiny data.

Real components throughout: Optuna journal storage, an MLflow sqlite store (per test, from
conftest), submitit's debug executor (jobs run in this process) and its local executor (jobs
are separate processes, which is what the kill-and-resume test needs).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import submitit
import yaml

from singer.config import compose
from singer.launch import CheckpointableJob
from singer.sweep import main
from singer.sweeps.driver import plan_jobs
from singer.sweeps.spec import SweepSpecError, hydra_value, load_sweep, merge_overrides
from singer.sweeps.trial import TrialJob, open_storage

from tiny import FAST, TINY

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"


def write_sweep(path: Path, **fields) -> Path:
    data = {
        "name": "tiny",
        "overrides": ["trainer=cpu_tiny"],
        "space": {"frontend.levels": {"type": "int", "low": 1, "high": 2}},
        "sampler": "grid",
        "objectives": [{"metric": "val/loss", "direction": "minimize"}],
        "seeds": [0],
        "limits": {"parallel": 1},
        "launcher": "debug",
        "timeout_min": 5,
    }
    data.update(fields)
    data = {k: v for k, v in data.items() if v is not None}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny_sweep(tmp_path, data_root, name, **fields) -> Path:
    fields.setdefault("overrides", [*FAST, f"data.root={data_root}"])
    return write_sweep(tmp_path / f"{name}.yaml", name=name, mlflow={"experiment": name}, **fields)


def runs_of(experiment: str):
    return mlflow.search_runs(experiment_names=[experiment])


# -- validation ---------------------------------------------------------------------------------
BAD_FILES = [
    # (fields, the key the error must name, text it must contain)
    ({"bogus": 1}, "'bogus'", "unknown key"),
    ({"limits": {"trails": 3}}, "'limits.trails'", "allowed: trials, parallel"),
    (
        {"space": {"frontend.levels": {"type": "int", "low": 1, "high": 3, "stepp": 1}}},
        "'space.frontend.levels.stepp'",
        "unknown key",
    ),
    ({"pruner": {"type": "median", "warmup": 3}}, "'pruner.warmup'", "warmup_steps"),
    (
        {"space": {"frontend": {"type": "choice", "values": ["mel", "melody"]}}},
        "'space.frontend'",
        "melody",
    ),
    ({"variants": {"ref": ["frontend.name=melody"]}}, "'variants.ref'", "Known frontend names"),
    ({"overrides": ["+frontend._target_=os.system"]}, "'overrides'", "_target_"),
    (
        {"space": {"frontend.levelz": {"type": "int", "low": 1, "high": 2}}},
        "'space.frontend.levelz'",
        "does not compose",
    ),
    (
        {"space": {"frontend.levels": {"type": "int", "low": 4, "high": 1}}},
        "'space.frontend.levels'",
        "low=4 >= high=1",
    ),
    (
        {
            "sampler": "tpe",
            "limits": {"trials": 2},
            "space": {"trainer.lr": {"type": "logfloat", "low": 0.0, "high": 0.1}},
        },
        "'space.trainer.lr.low'",
        "low > 0",
    ),
    (
        {"space": {"trainer.lr": {"type": "float", "low": 0.1, "high": 0.2}}},
        "'space.trainer.lr.type'",
        "choice or int with the grid sampler",
    ),
    (
        {"objectives": [{"metric": "val/los"}]},
        "'objectives[0].metric'",
        "val/loss, val/mse, train/loss",
    ),
    ({"objectives": [{"direction": "minimize"}]}, "'objectives[0].metric'", "is required"),
    ({"objectives": None}, "'objectives'", "is required"),
    (
        {"objectives": [{"metric": "val/loss", "direction": "down"}]},
        "'objectives[0].direction'",
        "minimize | maximize",
    ),
    ({"launcher": "kubernetes"}, "'launcher'", "debug | local | slurm:<profile>"),
    ({"launcher": "slurm:no_such_profile"}, "'launcher'", "unknown SLURM profile"),
    ({"overrides": ["seed=3"]}, "'overrides[0]'", "seeds go in 'seeds'"),
    ({"sampler": "annealing"}, "'sampler'", "grid | tpe | random"),
    (
        {
            "pruner": {"type": "median"},
            "objectives": [{"metric": "val/loss"}, {"metric": "eval/sync"}],
        },
        "'pruner.type'",
        "multi-objective",
    ),
    ({"seeds": [0, 0]}, "'seeds'", "distinct"),
    (
        {"objectives": [{"metric": "eval/psnr", "direction": "maximize"}]},
        "'objectives'",
        "no 'evaluate' section",
    ),
    ({"evaluate": {"protocol": {"num_clip": 2}}}, "'evaluate.protocol'", "unknown protocol keys"),
    ({"evaluate": {"protocol": {"steps": 0}}}, "'evaluate.protocol'", "steps must be >= 1"),
    (
        {"evaluate": {"protocol": {"metrics": ["ssim", "fidd"]}}},
        "'evaluate.protocol.metrics[1]'",
        "fidd",
    ),
    ({"evaluate": {"split": "test"}}, "'evaluate.split'", "val | train | all"),
    ({"evaluate": {"bands": "yes"}}, "'evaluate.bands'", "true | false"),
    ({"evaluate": {"protocl": {}}}, "'evaluate.protocl'", "unknown key"),
]


@pytest.mark.parametrize(
    "fields,key,text", BAD_FILES, ids=[f"{i}-{c[1]}" for i, c in enumerate(BAD_FILES)]
)
def test_bad_sweep_files_fail_naming_file_and_key(tmp_path, fields, key, text):
    path = write_sweep(tmp_path / "bad.yaml", **fields)
    with pytest.raises(SweepSpecError) as info:
        load_sweep(path)
    message = str(info.value)
    assert str(path) in message and f"key {key}" in message and text in message, message


def test_cli_reports_errors_without_launching(tmp_path, capsys):
    path = write_sweep(tmp_path / "bad.yaml", objectives=[{"metric": "loss"}])
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert "objectives[0].metric" in capsys.readouterr().err  # errors go to stderr
    assert not (tmp_path / "out").exists()
    good = write_sweep(tmp_path / "good.yaml")
    assert main([str(good), "--launcher", "nowhere", "--dry-run"]) == 2
    assert "'--launcher'" in capsys.readouterr().err


def test_override_text():
    assert hydra_value([16, 32, 64]) == "[16,32,64]"
    assert (
        hydra_value(1e-5) == "1e-05" and hydra_value(True) == "true" and hydra_value("db2") == "db2"
    )
    assert hydra_value("/tmp/a b") == "'/tmp/a b'" and hydra_value("null") == "'null'"
    assert merge_overrides(["frontend=msm", "trainer.steps=5"], ["frontend=mel"]) == [
        "frontend=mel",
        "trainer.steps=5",
    ]


def test_preempted_job_requeues_itself_with_resume():
    job = TrialJob(
        study_name="s",
        storage="journal:/x",
        trial_id=0,
        trial_number=0,
        seed=0,
        overrides=[],
        out_dir="/x",
        metrics=["val/loss"],
        report_metric="val/loss",
        pruner={"type": "none"},
        sampler={"type": "grid"},
        tracking_uri="sqlite:///x.db",
        experiment="s",
    )
    assert isinstance(job, CheckpointableJob) and job.resume is False
    requeued = job.checkpoint()
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    assert requeued.function.resume is True and requeued.function.trial_id == 0
    assert job.resume is False  # the running job is left as it was


# -- dry runs -----------------------------------------------------------------------------------
def test_shipped_sweeps_validate():
    for name in ("frontends", "hparam_search"):
        spec = load_sweep(SWEEPS / f"{name}.yaml")
        assert spec.name == name and spec.launcher == "local" and spec.parallel == 2
        # the CPU-tiny preset: one thread per job, no sample video
        assert TINY in spec.overrides
        cfg = compose(list(spec.overrides))
        assert cfg.trainer.threads == 1 and cfg.trainer.sample_at_end is False
    for name in ("spectral_scales", "spectral_scales_full"):  # the laptop proxy, compared to mel
        spec = load_sweep(SWEEPS / f"{name}.yaml")
        assert spec.name == name and "experiment=laptop_proxy" in spec.overrides
        assert spec.objectives[0].metric == "eval/audio_effect/mean"
        assert spec.compare["reference"] == "mel" and spec.compare["bands"]
        assert len(spec.seeds) >= (3 if name.endswith("full") else 2)
    tpe = load_sweep(SWEEPS / "hparam_search.yaml")
    assert tpe.sampler == "tpe" and tpe.pruner["type"] == "median" and tpe.target_trials() == 12
    assert [p.key for p in tpe.space] == [
        "trainer.lr",
        "backbone.channels",
        "model.audio_dropout",
        "model.diffusion.min_snr_gamma",
    ]
    assert tpe.space[1].override("[16,32,64]") == "backbone.channels=[16,32,64]"


def test_dry_run_lists_the_whole_grid(capsys):
    assert main([str(SWEEPS / "spectral_scales.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    jobs = [line.split(None, 4) for line in out.splitlines() if line.startswith("  trial")]
    got = {(int(j[1]), int(j[3]), j[4].strip()) for j in jobs}
    expected = {(0, s, "mel [frontend=mel]") for s in (0, 1)}
    configs = [
        f"frontend.levels={lv} frontend.wavelet={w}" for lv in (1, 2, 4) for w in ("haar", "db2")
    ]
    expected |= {(1 + i, s, c) for i, c in enumerate(configs) for s in (0, 1)}
    assert len(jobs) == 14 and got == expected
    assert "7 trials × 2 seeds (0, 1) = 14 jobs on local" in out
    assert "nothing launched" in out

    spec = load_sweep(SWEEPS / "spectral_scales.yaml")
    assert len(plan_jobs(spec, max_trials=3)) == 6


def test_dry_run_of_a_sampled_sweep_shows_space_and_counts(capsys):
    assert (
        main(
            [
                str(SWEEPS / "hparam_search.yaml"),
                "--dry-run",
                "--launcher",
                "debug",
                "--max-trials",
                "5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "5 trials × 1 seeds (0) = 5 jobs on debug" in out
    assert "sampler tpe (seed 0)" in out and "trainer.lr:" in out and '"logfloat"' in out
    assert "0 variant trials first, then 5 sampled trials" in out


# -- real sweeps --------------------------------------------------------------------------------
def test_tiny_sweep_records_study_and_mlflow(tmp_path, data_root, capsys):
    path = tiny_sweep(
        tmp_path,
        data_root,
        "tiny2",
        seeds=[0, 1],
        limits={"parallel": 2},
        space={"trainer.lr": {"type": "choice", "values": [1.0e-3, 2.0e-3]}},
    )
    out_dir = tmp_path / "out"
    assert main([str(path), "--out", str(out_dir), "--no-progress", "--poll", "0.2"]) == 0
    printed = capsys.readouterr().out

    study = optuna.load_study(
        study_name="tiny2", storage=open_storage(f"journal:{out_dir / 'optuna.journal'}")
    )
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert [t.params["trainer.lr"] for t in trials] == [1e-3, 2e-3]
    for t in trials:  # the objective is the mean over seeds, and each seed's value is kept
        seeds = [t.user_attrs[f"result.seed{s}"]["values"]["val/loss"] for s in (0, 1)]
        assert t.value == pytest.approx(sum(seeds) / 2)
        assert t.intermediate_values  # the jobs reported to the driver's trial

    runs = runs_of("tiny2")
    parent = runs[runs["tags.sweep.role"] == "parent"]
    children = runs[runs["tags.sweep.role"] != "parent"]
    assert len(parent) == 1 and len(children) == 4
    parent_id = parent["run_id"].iloc[0]
    assert (children["tags.mlflow.parentRunId"] == parent_id).all()
    assert (children["status"] == "FINISHED").all() and (children["tags.sweep"] == "tiny2").all()
    pairs = sorted(zip(children["tags.trial"], children["tags.seed"]))
    assert pairs == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    assert parent["status"].iloc[0] == "FINISHED"
    best = study.best_trial
    assert parent["params.best.trainer.lr"].iloc[0] == str(best.params["trainer.lr"])
    assert parent["tags.best.trial"].iloc[0] == str(best.number)
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(parent_id, "summary")]
    assert sorted(artifacts) == ["summary/trials.csv", "summary/trials.md"]
    table = (out_dir / "trials.csv").read_text().splitlines()
    assert len(table) == 3 and table[0].startswith("trial,state,variant,trainer.lr,val/loss")

    assert (
        f"best: trial {best.number}" in printed
        and "mlflow ui --backend-store-uri sqlite:///" in printed
    )
    assert parent_id in printed

    # The output dir exists now: starting again without --resume is an error that says what to do.
    assert main([str(path), "--out", str(out_dir), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err


CRASH = "No viable backend for scaled_dot_product_attention"


def test_nan_and_crashing_trials_fail_and_the_sweep_goes_on(tmp_path, data_root):
    path = tiny_sweep(
        tmp_path,
        data_root,
        "failing",
        space={
            "trainer.lr": {"type": "choice", "values": [1.0e-3, 1.0e30]}
        },  # 1e30: the loss turns NaN
        # Raises inside training (no attention kernel fits); out-of-range values such as
        # trainer.log_every=0 are rejected before launch, so they cannot stand in for a crash.
        variants={"crash": ["trainer.attention=cudnn", "device=cpu"]},
    )
    out_dir = tmp_path / "out"
    assert main([str(path), "--out", str(out_dir), "--no-progress", "--poll", "0.2"]) == 0

    study = optuna.load_study(
        study_name="failing", storage=open_storage(f"journal:{out_dir / 'optuna.journal'}")
    )
    by_number = {t.number: t for t in study.get_trials()}
    assert sorted(by_number) == [0, 1, 2]
    crash, good, nan = by_number[0], by_number[1], by_number[2]
    assert crash.params == {"variant": "crash"} and crash.state.name == "FAIL"
    assert CRASH in crash.user_attrs["fail_reason"]
    assert good.state.name == "COMPLETE"
    assert nan.state.name == "FAIL" and "NonFiniteLossError" in nan.user_attrs["fail_reason"]

    runs = runs_of("failing")
    children = runs[runs["tags.sweep.role"] != "parent"].set_index("tags.trial")
    assert children.loc["0", "status"] == "FAILED" and CRASH in children.loc["0", "tags.error"]
    assert children.loc["1", "status"] == "FINISHED"
    assert (
        children.loc["2", "status"] == "FAILED"
        and "NonFiniteLossError" in children.loc["2", "tags.error"]
    )
    assert runs[runs["tags.sweep.role"] == "parent"]["status"].iloc[0] == "FINISHED"
    assert CRASH in (out_dir / "trials.md").read_text()


def test_pruned_trial_is_told_pruned(tmp_path, data_root):
    # min_snr_gamma=1000 weights the loss more heavily, so its validation loss sits above the
    # finished gamma=5 trial at the first report and the median pruner stops it there.
    path = tiny_sweep(
        tmp_path,
        data_root,
        "pruning",
        space={"model.diffusion.min_snr_gamma": {"type": "choice", "values": [5.0, 1000.0]}},
        pruner={"type": "median", "startup_trials": 1, "warmup_steps": 0},
    )
    out_dir = tmp_path / "out"
    assert main([str(path), "--out", str(out_dir), "--no-progress", "--poll", "0.2"]) == 0

    study = optuna.load_study(
        study_name="pruning", storage=open_storage(f"journal:{out_dir / 'optuna.journal'}")
    )
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "PRUNED"]
    pruned = study.get_trials()[1]
    assert list(pruned.intermediate_values) == [2]  # stopped at the first validation of 4 steps
    runs = runs_of("pruning")
    child = runs[(runs["tags.sweep.role"] != "parent") & (runs["tags.trial"] == "1")]
    assert child["status"].iloc[0] == "KILLED" and child["tags.sweep.state"].iloc[0] == "PRUNED"


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_killed_driver_resumes_without_losing_or_repeating_trials(tmp_path, data_root, capsys):
    """SIGKILL the driver mid-sweep (and one job with it), then --resume: every trial exactly once.

    Trials 0 and 1 train 3x longer than trial 2, so both still run when trial 2 finishes and the
    driver is killed. Trial 0's job is killed too (it must be resubmitted and continue from its
    checkpoint); trial 1's job survives its driver (it must be re-attached).
    """
    path = tiny_sweep(
        tmp_path,
        data_root,
        "resumed",
        launcher="local",
        limits={"parallel": 3},
        space=None,
        variants={
            "killed": ["trainer.steps=12"],
            "kept": ["trainer.steps=12", "trainer.lr=2.0e-3"],
            "short": ["trainer.lr=3.0e-3"],
        },
    )
    out_dir = tmp_path / "out"
    journal = out_dir / "optuna.journal"
    command = [
        sys.executable,
        "-m",
        "singer.sweep",
        str(path),
        "--out",
        str(out_dir),
        "--no-progress",
        "--poll",
        "0.3",
    ]
    driver = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            if journal.exists():
                study = optuna.load_study(
                    study_name="resumed", storage=open_storage(f"journal:{journal}")
                )
                if any(t.state.name == "COMPLETE" for t in study.get_trials()):
                    break
            time.sleep(0.3)
        assert driver.poll() is None, driver.stdout.read().decode()
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    study = optuna.load_study(study_name="resumed", storage=open_storage(f"journal:{journal}"))
    assert [t.state.name for t in study.get_trials()] == ["RUNNING", "RUNNING", "COMPLETE"]
    controller = int(
        json.loads((out_dir / "sweep_state.json").read_text())["jobs"]["0-seed0"]["job_id"]
    )
    for pid in [
        *_children(controller),
        controller,
    ]:  # the training process, then its submitit controller
        os.kill(pid, signal.SIGKILL)
    checkpoint = out_dir / "trials" / "0000-seed0" / "checkpoints" / "last.pt"
    assert checkpoint.exists()

    assert (
        main([str(path), "--out", str(out_dir), "--resume", "--no-progress", "--poll", "0.3"]) == 0
    )
    printed = capsys.readouterr().out
    assert (
        "trial 0 adopted" in printed and "seed 0: resubmitted with trainer.resume=true" in printed
    ), printed
    assert "trial 1 adopted" in printed and "re-attached" in printed, printed

    study = optuna.load_study(study_name="resumed", storage=open_storage(f"journal:{journal}"))
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert [t.params for t in trials] == [
        {"variant": "killed"},
        {"variant": "kept"},
        {"variant": "short"},
    ]
    assert trials[0].user_attrs["job.seed0"]["resume"] is True
    assert trials[0].user_attrs["result.seed0"]["step"] == 12

    runs = runs_of("resumed")
    parents = runs[runs["tags.sweep.role"] == "parent"]
    children = runs[runs["tags.sweep.role"] != "parent"]
    assert len(parents) == 1 and parents["status"].iloc[0] == "FINISHED"
    assert sorted(children["tags.trial"]) == [
        "0",
        "1",
        "2",
    ]  # one run per trial: none lost, none twice
    assert (children["status"] == "FINISHED").all()
    assert (children["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]).all()
    assert sorted(p.name for p in (out_dir / "trials").iterdir()) == [
        "0000-seed0",
        "0001-seed0",
        "0002-seed0",
    ]
    state = json.loads((out_dir / "sweep_state.json").read_text())
    assert state["sessions"] == 2 and sorted(state["jobs"]) == ["0-seed0", "1-seed0", "2-seed0"]
    assert all(job["outcome"] == "COMPLETE" for job in state["jobs"].values())


def test_sweep_evaluates_trials_and_optimises_an_eval_metric(tmp_path, data_root):
    """``evaluate:``: each trial's checkpoint goes through singer.evaluation after training; the
    eval/... metrics land in the trial's MLflow run and can be the objective."""
    path = tiny_sweep(
        tmp_path,
        data_root,
        "evaluated",
        objectives=[{"metric": "eval/psnr", "direction": "maximize"}],
        space={"trainer.lr": {"type": "choice", "values": [1.0e-3, 2.0e-3]}},
        evaluate={
            "protocol": {"num_clips": 2, "steps": 2, "batch_size": 2, "metrics": ["psnr", "ssim"]}
        },
    )
    assert main([str(path), "--out", str(tmp_path / "out"), "--no-progress", "--poll", "0.1"]) == 0

    study = optuna.load_study(
        study_name="evaluated",
        storage=open_storage(f"journal:{tmp_path / 'out' / 'optuna.journal'}"),
    )
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"], [
        t.user_attrs for t in study.trials
    ]
    children = runs_of("evaluated")
    children = children[children["tags.sweep.role"] != "parent"].sort_values("tags.trial")
    assert [t.value for t in study.trials] == pytest.approx(list(children["metrics.eval/psnr"]))
    assert (children["metrics.eval/ssim"] > -1).all() and children[
        "tags.eval.protocol"
    ].notna().all()
    for trial_dir in sorted((tmp_path / "out" / "trials").iterdir()):
        assert list(trial_dir.glob("eval/*/metrics.json")), list(trial_dir.rglob("*"))
