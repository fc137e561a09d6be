"""What the trainer (and the evaluator) feed on: the datasets of a config, the seeded batch
stream, and batches resized and moved to the device.

The data order is a pure function of (seed, batch index), so a resumed run needs no saved
sampler state; see :class:`BatchStream`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from singer.data.cache import data_cache
from singer.data.dataset import ClipDataset
from singer.distributed import DistEnv


class BatchStream:
    """Batches of dataset indices, a pure function of (seed, batch index[, rank, world size]).

    The index stream is the concatenation of per-epoch permutations; global batch k holds
    items [k·B·W, (k+1)·B·W) of it (W = ``world_size``), so resuming at batch k needs no
    saved sampler state. Rank r takes items r, r + W, r + 2W, ... of each global batch
    (``DistributedSampler``-style): B items, disjoint across ranks.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        start_batch: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        if num_items == 0:
            raise ValueError("the training split is empty")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.num_items, self.batch_size, self.seed, self.start_batch = (
            num_items,
            batch_size,
            seed,
            start_batch,
        )
        self.rank, self.world_size = rank, world_size

    def _epoch(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_items, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.world_size
        position = self.start_batch * global_batch
        epoch, offset = divmod(position, self.num_items)
        order = self._epoch(epoch)
        while True:
            batch = []
            while len(batch) < global_batch:
                if offset == self.num_items:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch(epoch)
                batch.append(order[offset])
                offset += 1
            yield batch[self.rank :: self.world_size]


def build_datasets(cfg: DictConfig) -> tuple[ClipDataset, ClipDataset, Path]:
    """Train and validation ClipDatasets for the config (SynthSing generated on first use),
    and the prepared cache they read."""
    data = cfg.data
    cache = data_cache(cfg)
    kinds = list(data.kinds) if data.kinds else None
    common = dict(
        num_frames=cfg.trainer.num_frames,
        motion_frames=max(1, cfg.model.get("motion_frames", 0)),
        val_fraction=data.val_fraction,
        test_fraction=data.get("test_fraction", 0.0),
        seed=cfg.data.get("split_seed", 0),
        kinds=kinds,
    )
    train = ClipDataset(cache, split="train", **common)
    val = ClipDataset(cache, split="val", **common)
    return train, val, cache


def loaders(
    train_set: Dataset,
    val_set: Dataset,
    tc: Mapping,
    seed: int,
    start_batch: int,
    env: DistEnv,
    device: torch.device,
) -> tuple[DataLoader, DataLoader]:
    """The training batches of one rank (its shard of the :class:`BatchStream` from batch
    ``start_batch`` on, endless) and the validation batches (in order, once), with the
    ``trainer`` section's ``batch_size`` and ``num_workers``."""
    stream = BatchStream(
        len(train_set),
        tc["batch_size"],
        seed,
        start_batch,
        rank=env.rank,
        world_size=env.world_size,
    )
    workers = int(tc["num_workers"])
    train = DataLoader(
        train_set,
        batch_sampler=stream,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )
    val = DataLoader(val_set, batch_size=tc["batch_size"], shuffle=False, num_workers=0)
    return train, val


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch with every tensor on ``device`` (lists such as ``clip_id`` stay as they are)."""
    return {
        k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()
    }


def resize_batch(batch: dict, size: int) -> dict:
    """``video``/``motion`` ``B×3×F×H×W`` and ``ref`` ``B×3×H×W`` resized to ``size``² (area
    interpolation), for a prepared cache made at another size than ``trainer.size``."""
    if batch["video"].shape[-1] == size:
        return batch
    out = dict(batch)
    for key in ("video", "motion"):
        b, c, f, h, w = batch[key].shape
        frames = batch[key].permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        frames = F.interpolate(frames, size=(size, size), mode="area")
        out[key] = frames.reshape(b, f, c, size, size).permute(0, 2, 1, 3, 4)
    out["ref"] = F.interpolate(batch["ref"], size=(size, size), mode="area")
    return out
