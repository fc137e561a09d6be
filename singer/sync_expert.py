"""The lip-sync expert of a ``model=syncnet`` run, for the metrics and baselines that use one
(the ``sync_offline`` metric, the sync loss of ``wav2lip``).

The network is :class:`singer.models.syncnet.SyncExpert`; a trained run of it is loaded like any
other, through :mod:`singer.inference`, which stands above the models.
"""

from __future__ import annotations

from pathlib import Path

from singer.inference import load_model, resolve_checkpoint
from singer.weights import MissingWeightsError

EXPERT_HINT = (
    "train a lip-sync expert on the same kind of data first, e.g. "
    "`python -m singer.train model=syncnet trainer=cpu_tiny out_dir=runs/sync_expert`, then give that run "
    "directory (or its checkpoints/last.pt)"
)


def load_expert(
    checkpoint: str | Path | None, *, config_key: str, device: str = "cpu", use_ema: bool = True
):
    """``(expert, loaded)``: the frozen, eval-mode :class:`SyncExpert` of a ``model=syncnet`` run
    (run directory or ``.pt``) and its ``singer.inference.LoadedModel`` record.

    Raises ``singer.weights.MissingWeightsError`` naming ``config_key`` and how to train an
    expert when the checkpoint is not set or not there; ``ValueError`` for a run of another model.
    """
    if checkpoint is None or str(checkpoint).strip() == "":
        raise MissingWeightsError(
            f"a lip-sync expert checkpoint is needed but `{config_key}` is not set; {EXPERT_HINT}"
        )
    try:
        path = resolve_checkpoint(checkpoint)
    except FileNotFoundError as err:
        raise MissingWeightsError(f"`{config_key}={checkpoint}`: {err}; {EXPERT_HINT}") from None
    loaded = load_model(path, device=device, use_ema=use_ema)
    if loaded.spec.name != "syncnet":
        raise ValueError(
            f"`{config_key}={checkpoint}` is a '{loaded.spec.name}' run, not a model=syncnet expert"
        )
    return loaded.model.eval().requires_grad_(False), loaded
