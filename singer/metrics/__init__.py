"""Evaluation metrics (``update()``/``compute()``, contract in ``singer.metrics.base``).

Importing this package registers every metric module in it in ``singer.registry.METRICS``.
"""

from singer.metrics.base import EvalBatch, Metric
from singer.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["EvalBatch", "Metric"]
