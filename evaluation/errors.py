"""Errors of the evaluation package: bad requests for an analysis, never degenerate data.

    EvaluationError                 base; its message is shown to the analyst as is
    ├── UnknownExperimentError      no interactions carry this deployment id
    ├── UnknownMetricError          a metric name that is neither built in nor configured
    ├── EmptyArmError               an arm has no data in the analysed phase
    └── InvalidSplitError           a traffic split that does not sum to 100 or cannot be parsed

Degenerate data (zero variance, n = 1) is not an error: statistics return a result whose
``error`` field says why (messages in ``evaluation.constants``).
"""

from __future__ import annotations


class EvaluationError(Exception):
    """Base of the analysis errors; the message names the problem."""


class UnknownExperimentError(EvaluationError):
    """No interactions carry this experiment (deployment) id."""


class UnknownMetricError(EvaluationError):
    """A metric name that is not defined."""


class EmptyArmError(EvaluationError):
    """An arm has no data where an analysis needs it."""


class InvalidSplitError(EvaluationError):
    """A traffic split that does not sum to 100 or cannot be parsed."""
