"""Sweeps: ``python -m singer.sweep sweeps/X.yaml`` (Optuna picks, submitit runs, MLflow records).

- :mod:`singer.sweeps.spec`: the sweep file format and its validation (``load_sweep``), with
  its domain rules in :mod:`singer.sweeps.rules` and Hydra override text in
  :mod:`singer.sweeps.overrides`;
- :mod:`singer.sweeps.trial`: the job that trains one (trial, seed) and reports to Optuna;
- :mod:`singer.sweeps.driver`: the ask/submit/tell loop and resume, with the sweep folder and
  its state in :mod:`singer.sweeps.state`, the Optuna study in :mod:`singer.sweeps.study` and
  the submitted jobs in :mod:`singer.sweeps.jobs`;
- :mod:`singer.sweeps.report`: what a sweep ends with (trials table, MLflow summary, verdict);
- :mod:`singer.sweeps.progress`: the live display.

The format is documented in ``sweeps/README.md``.
"""

from singer.sweeps.spec import SweepSpec, SweepSpecError, load_sweep

__all__ = ["SweepSpec", "SweepSpecError", "load_sweep"]
