"""``python -m singer.train [overrides]``: train one model from the composed config.

Examples:
    python -m singer.train trainer=cpu_tiny                       # SINGER (msm + unet3d + SFM)
    python -m singer.train trainer=cpu_tiny frontend=mel backbone.bottleneck_filter=none
    python -m singer.train trainer=cpu_tiny out_dir=runs/a trainer.resume=true   # continue a run
    python -m singer.train -m frontend=mel,msm trainer=cpu_tiny hydra/launcher=submitit_local
    python -m singer.train -m frontend=mel,msm hydra/launcher=slurm_gpu1   # submitit_slurm + slurm/profiles/gpu1.yaml
"""

from __future__ import annotations

import hydra
from hydra.experimental.callback import Callback
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import sys

from singer.config import ConfigError, validate
from singer.launch import register_hydra_launchers
from singer.trainer import train

register_hydra_launchers()  # hydra/launcher=slurm_<profile> for every slurm/profiles/<profile>.yaml


class PrepareTrackingStore(Callback):
    """Hydra multirun: create the MLflow store and experiment once, before parallel jobs start.

    Two jobs that are the first writers of a new sqlite store race on its schema migration.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from singer import tracking

        tracking.get_or_create_experiment(config.tracking.experiment, config.tracking.uri)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        validate(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    out_dir = cfg.out_dir or HydraConfig.get().runtime.output_dir
    result = train(cfg, out_dir)
    if result.rank != 0:  # one summary per DDP run
        return result.val_loss
    print(
        f"done: {result.step} steps, loss {result.first_loss:.4f} → {result.final_loss:.4f}"
        + (f", val {result.val_loss:.4f}" if result.val_loss is not None else "")
        + f"\ncheckpoint: {result.checkpoint}\nmlflow run: {result.run_id}"
    )
    return result.val_loss  # what Hydra sweepers optimise


if __name__ == "__main__":
    main()
