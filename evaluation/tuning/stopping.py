"""When a study stops and when a trial is pruned.

Stopping (the refinement's plateau rule): with the finished trials' values in order (a pruned or
failed trial counts as no value), the study stops once the best value of all of them improved by
less than ``min_delta`` on the best value before the last ``patience`` of them. Lower is better.

Pruning: a trial reports its training loss at fixed shares of its run. It is pruned when the loss
is not finite or rises above ``divergence_factor`` times its first step's loss (``first_loss``,
a trial attribute: the model's loss before any update), or, past the startup trials, when it trails
the median of earlier trials at the same share of their runs (Optuna's median rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
from optuna.pruners import BasePruner, MedianPruner
from optuna.trial import FrozenTrial, TrialState

FIRST_LOSS = "first_loss"  # trial attribute: the loss of the trial's first optimizer step
STAGE = "stage"  # trial attribute: "coarse" or "refine"
STOPPED = "stopped"  # study attribute: why the refinement stopped
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def best(values: Sequence[float | None]) -> float | None:
    """The lowest finite value, or None."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return min(finite) if finite else None


def plateaued(values: Sequence[float | None], patience: int, min_delta: float) -> bool:
    """Whether the best of ``values`` improved by less than ``min_delta`` over the last ``patience`` values."""
    if len(values) <= patience:
        return False
    before, now = best(values[:-patience]), best(values)
    if now is None:
        return True  # nothing finished with a value in the whole window, nor before it
    return before is not None and before - now < min_delta


def finished_values(study: optuna.Study) -> list[float | None]:
    """The values of the study's finished trials in order (None for pruned and failed ones)."""
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    return [t.value if t.state == TrialState.COMPLETE else None for t in trials]


class PlateauStop:
    """Optuna callback: stop the study when the refinement has plateaued (see the module docstring)."""

    def __init__(self, patience: int, min_delta: float) -> None:
        self.patience = patience
        self.min_delta = min_delta

    def reason(self, study: optuna.Study) -> str | None:
        """Why the study should stop now, or None."""
        refine = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if t.user_attrs.get(STAGE) == "refine"]
        if len(refine) < self.patience or not plateaued(finished_values(study), self.patience, self.min_delta):
            return None
        return f"the best value improved by less than {self.min_delta} over the last {self.patience} trials"

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Stop ``study`` (recording why) once the rule holds."""
        reason = self.reason(study)
        if reason is not None:
            study.set_user_attr(STOPPED, reason)
            study.stop()


class DivergencePruner(BasePruner):
    """Prune a diverging trial at once, else defer to the median rule."""

    def __init__(self, divergence_factor: float, startup_trials: int) -> None:
        self.divergence_factor = divergence_factor
        self._median = MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=0)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Whether ``trial`` should stop at its last report."""
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        first = trial.user_attrs.get(FIRST_LOSS)
        if not math.isfinite(value) or (first is not None and value > self.divergence_factor * float(first)):
            return True
        return bool(self._median.prune(study, trial))
