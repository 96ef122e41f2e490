"""``flywheel tune``: search the refresh's training settings with an Optuna study (``evaluation.tuning``).

Runs here, not in the worker: it reads a curated dataset from disk (default: the newest under
``refresh.work_dir``) and trains each trial in the training subprocess. The study is stored beside
the registry and resumes when run again; the next refresh trains with its best settings. One line
per finished trial; at the end the best settings, the importances, and the report's path.

Exit codes: 0 the run ended (budget spent or plateau reached); 1 the study could not run (no
dataset, another dataset than the study's, an unknown parent adapter); 2 bad settings or options.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from feedback.errors import ConfigError, FlywheelError
from feedback.registry import AdapterRegistry
from feedback.settings import Settings, load_settings

if TYPE_CHECKING:  # optuna, torch and the model load only when the command runs: other commands start fast
    import optuna

    from evaluation.tuning.run import TuneResult


def tune(
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="A curated dataset directory (default: the newest refresh's).")
    ] = None,
    study: Annotated[str | None, typer.Option("--study", help="The study's name (default: tuning.study).")] = None,
    parent: Annotated[
        str | None, typer.Option("--parent", help="Registry adapter version the trials continue (default: new LoRA).")
    ] = None,
    trials: Annotated[int | None, typer.Option("--trials", min=1, help="Trials of the whole study.")] = None,
    minutes: Annotated[float | None, typer.Option("--minutes", min=0.01, help="This run's wall time.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the study's summary as JSON.")] = False,
) -> None:
    """Tune the refresh's training settings: a coarse search, then TPE refinement until it plateaus."""
    import optuna

    from evaluation.tuning.best import latest_dataset
    from evaluation.tuning.run import tune as run_tune

    settings = _settings(trials, minutes)
    directory = dataset or latest_dataset(settings.refresh.work_dir)
    if directory is None:
        _exit(f"no curated dataset under {str(settings.refresh.work_dir)!r}; run a refresh or pass --dataset", 1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        parent_dir = None if parent is None else AdapterRegistry(settings.model.registry_dir).fetch(parent)
        result = run_tune(settings, directory, study=study, parent_adapter=parent_dir, progress=trial_line)
    except FlywheelError as exc:  # TuningError among them
        _exit(str(exc), 1)
    _print_summary(result, as_json)


def _print_summary(result: TuneResult, as_json: bool) -> None:
    summary = result.summary
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    best = summary["best"]
    if best is None:
        typer.secho(f"study {summary['study']}: no trial completed yet", err=True)
    else:
        line = f"best: trial {best['trial']}, held-out loss {best['value']:.5f}, {_params(best['params'])}"
        typer.secho(line, err=True)
    shares = ", ".join(f"{k} {v:.0%}" for k, v in summary["importance"].items()) or summary["importance_error"]
    typer.secho(f"importance: {shares}", err=True)
    done = result.run
    ended = done.stopped or "the budget (trials or minutes) is spent"
    typer.secho(f"{done.trials_after - done.trials_before} trials in {done.seconds:.0f} s; {ended}", err=True)
    typer.secho(f"report: {result.report}", err=True)


def _settings(trials: int | None, minutes: float | None) -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        _exit(str(exc), 2)
    budget = {k: v for k, v in (("max_trials", trials), ("max_minutes", minutes)) if v is not None}
    return settings.model_copy(update={"tuning": settings.tuning.model_copy(update=budget)})


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per finished trial: its stage, outcome, parameters and the best value so far."""
    from optuna.trial import TrialState

    from evaluation.tuning.stopping import STAGE

    state = {TrialState.COMPLETE: "", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(trial.state, "")
    value = state or f"held-out loss {trial.value:.5f}"
    seconds = trial.duration.total_seconds() if trial.duration else math.nan
    best = min((t.value for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.value is not None), default=None)
    tail = "" if best is None else f" (best {best:.5f})"
    stage = trial.user_attrs.get(STAGE, "")
    typer.secho(f"trial {trial.number} {stage}: {value}{tail} in {seconds:.1f} s; {_params(trial.params)}", err=True)


def _params(params: dict[str, object]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _exit(message: str, code: int) -> NoReturn:
    typer.secho(message, err=True, fg="red")
    raise typer.Exit(code)
