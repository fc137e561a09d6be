"""``model.sync.expert=train``: the lip-sync expert trained inside the wav2lip job, first, on the
same data, so a wav2lip run (e.g. one job of a sweep) needs nothing from another run.

The expert's config is the job's own (data, trainer, seed, tracking URI) with ``model`` replaced
by the ``model=syncnet`` defaults (``singer/conf/model/syncnet.yaml``) and ``trainer.steps`` by
``model.sync.train_steps`` (null: the job's own step count). It trains with the ordinary trainer
into ``<data.root>/sync_experts/<hash of that config>``, under a file lock, and a marker file
records completion. So

* jobs on the same data with the same settings share one expert (training is deterministic for
  a seed, so they would have trained the same one);
* a job killed while the expert trains resumes it from its checkpoint when it restarts;
* a restarted wav2lip job finds the finished expert and goes straight on.

Its MLflow run goes to the job's experiment as a top-level run named ``sync_expert-<hash>``
(tag ``role=sync_expert``), outside any sweep's parent run. Multi-process (DDP) jobs cannot
train it in-job (the trainer would start a second process group): train it first with
``python -m singer.train model=syncnet`` and pass its run directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

import singer.conf
from singer.config import to_container, validate
from singer.models.spec import get_model_spec
from singer.safe_io import file_lock
from singer.trainer import train

TRAIN = "train"
EXPERT_MODEL = "syncnet"  # the registered model the expert is (singer.models.syncnet)
KEY_SECTIONS = ("model", "data", "trainer", "seed")


def expert_config(cfg, steps: int | None = None) -> dict:
    """The plain config of the in-job expert, derived from the composed wav2lip config ``cfg``."""
    plain = to_container(cfg)
    spec = get_model_spec(EXPERT_MODEL)
    syncnet = Path(singer.conf.__file__).parent / "model" / f"{spec.config}.yaml"
    defaults = OmegaConf.to_container(OmegaConf.load(syncnet), resolve=True)
    plain["model"] = {"name": spec.name, **defaults}  # as `model=syncnet` composes it
    trainer = dict(plain["trainer"])
    trainer.update(
        steps=int(steps if steps is not None else trainer["steps"]),
        sample_at_end=False,
        resume=True,
    )
    plain["trainer"] = trainer
    plain["out_dir"] = None
    return plain


def expert_dir(plain: dict) -> Path:
    """``<data.root>/sync_experts/<12-hex hash of model, data, trainer, seed>``."""
    key = json.dumps({k: plain.get(k) for k in KEY_SECTIONS}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    return Path(plain["data"]["root"]) / "sync_experts" / digest


def ensure_expert(plain: dict) -> Path:
    """Train the expert of ``plain`` (see :func:`expert_config`) unless it is there; its run dir."""
    out = expert_dir(plain)
    done = out / ".complete"
    if done.exists():
        return out
    with file_lock(out.parent / f".{out.name}.lock"):
        if done.exists():  # another job finished it while this one waited
            return out
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise RuntimeError(
                "model.sync.expert=train cannot train the lip-sync expert inside a multi-process (DDP) job; "
                "train it first with `python -m singer.train model=syncnet ...` and set "
                "model.sync.expert=<that run directory>"
            )

        cfg = dict(plain)
        tracking = dict(cfg.get("tracking") or {})
        tags = {**(tracking.get("tags") or {}), "role": "sync_expert"}
        tracking.update(run_name=f"sync_expert-{out.name}", parent_run_id=None, tags=tags)
        cfg["tracking"] = tracking
        cfg["out_dir"] = str(out)
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        # The first call comes from the job's step-0 validation (no grad): training needs grad on.
        # fork_rng: the job's own random streams stay untouched.
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            result = train(validate(OmegaConf.create(cfg)), out, progress=False)
        done.write_text(
            json.dumps(
                {"step": result.step, "final_loss": result.final_loss, "run_id": result.run_id}
            )
        )
    return out
