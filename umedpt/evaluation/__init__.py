"""How much labelled data an encoder saves on a new task (UMedPT's data-efficiency claim).

``umedpt-fl evaluate`` trains a fresh head for a target task on class-stratified subsets of
its training labels, for every encoder under one fixed protocol, and reports the metric per
fraction and the share of labels each encoder saves against a randomly initialised one.
"""

from umedpt.evaluation.encoders import EncoderSpec, EncoderSpecError, parse_encoders
from umedpt.evaluation.protocol import EvalProtocol, summary_metric
from umedpt.evaluation.runner import (
    EvaluationMismatch,
    Target,
    choose_task,
    load_target,
    run_evaluation,
)
from umedpt.evaluation.subsets import stratified_subset
from umedpt.evaluation.summary import summarize

__all__ = [
    "EncoderSpec",
    "EncoderSpecError",
    "EvalProtocol",
    "EvaluationMismatch",
    "Target",
    "choose_task",
    "load_target",
    "parse_encoders",
    "run_evaluation",
    "stratified_subset",
    "summarize",
    "summary_metric",
]
