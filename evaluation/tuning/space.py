"""The search space of ``flywheel tune``: the tuned training parameters, their ranges, and the refinement box.

A *box* maps each tuned parameter to its ``[low, high]`` range. The coarse stage draws from the
full box of the settings; the refinement draws from the bounding box of the best coarse trials,
widened by a share of each full range (in log space for the log-scaled parameters) and clipped to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from feedback.settings import TrainingSettings, TuningSettings

PARAMS = ("learning_rate", "rank", "alpha_ratio", "epochs", "batch_size", "warmup_share")
LOG = frozenset({"learning_rate", "rank", "alpha_ratio", "batch_size"})  # searched on a log scale
INTEGER = frozenset({"rank", "epochs", "batch_size"})
NEW_ADAPTER_ONLY = frozenset({"rank", "alpha_ratio"})  # a continued adapter keeps its own shapes and scale

Box = dict[str, tuple[float, float]]
Params = Mapping[str, Any]


def full_box(settings: TuningSettings, *, new_adapter: bool) -> Box:
    """Every tuned parameter's configured range; rank and alpha only when the trials train a new LoRA."""
    names = [n for n in PARAMS if new_adapter or n not in NEW_ADAPTER_ONLY]
    return {name: (float(getattr(settings, name)[0]), float(getattr(settings, name)[1])) for name in names}


def distribution(name: str, low: float, high: float) -> BaseDistribution:
    """Optuna's distribution of ``name`` over ``[low, high]``."""
    if name in INTEGER:
        return IntDistribution(int(low), int(high), log=name in LOG)
    return FloatDistribution(low, high, log=name in LOG)


def suggest(trial: optuna.Trial, box: Box) -> dict[str, Any]:
    """Draw every parameter of ``box`` for ``trial``."""
    params: dict[str, Any] = {}
    for name, (low, high) in box.items():
        if name in INTEGER:
            params[name] = trial.suggest_int(name, int(low), int(high), log=name in LOG)
        else:
            params[name] = trial.suggest_float(name, low, high, log=name in LOG)
    return params


def refine_box(full: Box, top: Sequence[Params], widen: float) -> Box:
    """The bounding box of the ``top`` trials' parameters, widened by ``widen`` of each full range, clipped to it."""
    box: Box = {}
    for name, (low, high) in full.items():
        values = [float(p[name]) for p in top if name in p]
        if not values:
            box[name] = (low, high)
            continue
        scale, unscale = (math.log, math.exp) if name in LOG and low > 0 else (_same, _same)
        margin = (scale(high) - scale(low)) * widen
        lo = max(low, unscale(scale(min(values)) - margin))
        hi = min(high, unscale(scale(max(values)) + margin))
        if name in INTEGER:
            lo, hi = max(low, float(math.floor(lo + 1e-9))), min(high, float(math.ceil(hi - 1e-9)))
        box[name] = (min(lo, hi), max(lo, hi))
    return box


def training_settings(base: TrainingSettings, params: Params) -> TrainingSettings:
    """``base`` with the tuned parameters of ``params`` (alpha = rank x alpha ratio, at least 1), validated."""
    plain = ("learning_rate", "epochs", "batch_size", "warmup_share")
    updates = {name: params[name] for name in plain if name in params}
    if "rank" in params:
        ratio = float(params.get("alpha_ratio", base.alpha / base.rank))
        updates |= {"rank": int(params["rank"]), "alpha": max(1, round(int(params["rank"]) * ratio))}
    return TrainingSettings(**(base.model_dump() | updates))


def _same(value: float) -> float:
    return value
