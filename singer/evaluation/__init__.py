"""Evaluation: the fixed protocol, the evaluator, the frequency-band ablation and the probes.

    from singer.evaluation import evaluate_checkpoint, load_protocol
    result = evaluate_checkpoint("runs/x", protocol=load_protocol(overrides=["steps=20"]), bands=True)
    result.metrics["ssim"], result.ci["ssim"], result.path

Importing this package loads no model and writes nothing.
"""

from singer.bootstrap import bootstrap_ci
from singer.evaluation.inputs import EvaluationError, resolve_target
from singer.evaluation.protocol import EvalProtocol, ProtocolError, load_protocol
from singer.evaluation.runner import (
    EvalResult,
    NotGenerativeError,
    evaluate_checkpoint,
    evaluate_loaded,
)

__all__ = [
    "EvalProtocol",
    "EvalResult",
    "EvaluationError",
    "NotGenerativeError",
    "ProtocolError",
    "bootstrap_ci",
    "evaluate_checkpoint",
    "evaluate_loaded",
    "load_protocol",
    "resolve_target",
]
