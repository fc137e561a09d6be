"""``python -m singer.train [overrides]``: train one model from the composed config.

Examples:
    python -m singer.train trainer=cpu_tiny                       # SINGER (msm + unet3d + SFM)
    python -m singer.train trainer=cpu_tiny frontend=mel backbone.bottleneck_filter=none
    python -m singer.train trainer=cpu_tiny out_dir=runs/a trainer.resume=true   # continue a run
    python -m singer.train -m frontend=mel,msm trainer=cpu_tiny hydra/launcher=submitit_local
    python -m singer.train -m frontend=mel,msm hydra/launcher=slurm_gpu1   # submitit_slurm + slurm/profiles/gpu1.yaml

A user error (an unknown key, a value out of range, an import target) ends it with one line
and exit status 2; ``--debug`` or ``SINGER_DEBUG=1`` shows the traceback (see singer/cli.py).
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra._internal.hydra import Hydra
from hydra._internal.utils import (
    create_automatic_config_search_path,
    detect_calling_file_or_module_from_task_function,
    get_args_parser,
)
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf.errors import OmegaConfBaseException
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from singer import cli, tracking
from singer.config import (
    ConfigError,
    check_hydra_overrides,
    check_hydra_section,
    name_model,
    validate,
)
from singer.launch import export_torch_distributed_env, register_hydra_launchers
from singer.trainer import train

register_hydra_launchers()  # hydra/launcher=slurm_<profile> for every slurm/profiles/<profile>.yaml

CONFIG_PATH, CONFIG_NAME = "conf", "train"


class PrepareTrackingStore(Callback):
    """Hydra multirun: create the MLflow store and experiment once, before parallel jobs start.

    Two jobs that are the first writers of a new sqlite store race on its schema migration.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        tracking.get_or_create_experiment(config.tracking.experiment, config.tracking.uri)


@hydra.main(config_path=CONFIG_PATH, config_name=CONFIG_NAME, version_base="1.3")
def _task(cfg: DictConfig) -> float | None:
    # Under a submitit launcher with several tasks, the tasks join one DDP run.
    export_torch_distributed_env()
    with cli.user_errors():
        name_model(cfg, HydraConfig.get().runtime.choices.get("model"))
        validate(cfg)
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


def check_command_line(argv: list[str]) -> None:
    """Compose the config exactly as Hydra is about to, and check it, before Hydra runs.

    Hydra instantiates ``hydra.callbacks``, the launcher and the logging handlers of its own
    section before the task function sees the config, so a ``_target_`` there must be caught
    here: :func:`singer.config.check_hydra_overrides` limits what a command line may change in
    that section, and :func:`singer.config.check_hydra_section` checks the composed result
    (config files of ``--config-dir`` included). The rest of the config is validated too, so
    a bad value fails before any run directory or MLflow run exists.
    """
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.shell_completion:
        return
    check_hydra_overrides(args.overrides)
    calling_file, calling_module = detect_calling_file_or_module_from_task_function(_task)
    search_path = create_automatic_config_search_path(
        calling_file, calling_module, args.config_path or CONFIG_PATH
    )
    if args.config_dir is not None:
        config_dir = os.path.abspath(args.config_dir)
        if not os.path.isdir(config_dir):
            raise ConfigError(f"--config-dir {config_dir} is not a folder", "check the path")
        search_path.prepend(
            provider="command-line",
            path=f"file://{config_dir}",
            anchor=SearchPathQuery(provider="schema"),
        )
    GlobalHydra.instance().clear()
    try:
        composer = Hydra.create_main_hydra2(task_name="train", config_search_path=search_path)
        # One job of a multirun stands for all: the swept values reach validate() in each job.
        overrides = args.overrides
        if args.multirun:
            parsed = OverridesParser.create().parse_overrides(overrides)
            overrides = [o.input_line for o in parsed if not o.is_sweep_override()]
        cfg = composer.compose_config(
            args.config_name or CONFIG_NAME,
            overrides,
            run_mode=RunMode.MULTIRUN if args.multirun else RunMode.RUN,
            with_log_configuration=False,
        )
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(
            " ".join(str(err).split()),
            "check the override against the config (python -m singer.train --cfg job prints it)",
        ) from err
    finally:
        GlobalHydra.instance().clear()
    check_hydra_section(cfg.get("hydra"))
    name_model(cfg, cfg.hydra.runtime.choices.get("model"))
    validate(cfg)


def main() -> None:
    """The command line: check it (one-line errors, exit 2), then hand it to Hydra."""
    argv = sys.argv[1:]
    debug = cli.debug_enabled(argv)
    if debug:  # the task function and Hydra's error reporting run later, in this process
        os.environ[cli.DEBUG_ENV] = "1"
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    sys.argv = [sys.argv[0], *cli.strip_debug(argv)]
    try:
        with cli.argparse_errors_as_user_errors():
            check_command_line(sys.argv[1:])
    except Exception as err:  # a user error is one line; a bug re-raised with its traceback
        sys.exit(cli.fail(err, debug=debug))
    _task()


if __name__ == "__main__":
    main()
