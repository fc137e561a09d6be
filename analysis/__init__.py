"""Analysis of SINGER harness runs: MLflow runs → tidy pandas frames → seaborn figures.

- :mod:`analysis.runs` loads runs (by experiment or sweep name) and the evaluator's table
  artifacts (band sensitivity, probe R²) into tidy frames;
- :mod:`analysis.stats` aggregates over seeds with bootstrap confidence intervals;
- :mod:`analysis.plots` draws and saves every figure the notebooks show.

The notebooks in this folder only read their parameters, call these functions and save.
"""

from analysis.runs import AnalysisError

__all__ = ["AnalysisError"]
