"""Experiment and statistics settings: alpha, the sequential tuning parameter, priors, guards, gates.

They live in ``feedback.settings`` as the ``experiment`` section of every process's settings
(``FLYWHEEL_EXPERIMENT__ALPHA=0.01``, or ``[experiment]`` in the TOML file), so a report or a
decision is reproducible from the settings it prints; this module names them for the statistics code.
"""

from __future__ import annotations

from feedback.settings import CustomMetric, ExperimentSettings

__all__ = ["CustomMetric", "ExperimentSettings"]
