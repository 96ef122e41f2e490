"""The daily refresh, end to end: select → curate → train → gate → register → deploy as challenger.

One refresh is keyed by its date (``YYYY-MM-DD`` in the scheduler's time zone) and claimed in the
registry's ledger before anything else happens, so a date runs once across restarts and workers
unless an admin forces it (:meth:`feedback.registry.AdapterRegistry.claim_refresh`). A run:

1. **champion**: the current deployment's champion (the deployments topic, as the worker follows
   it) is what the refresh trains from: its adapter from the registry (checked against its hash),
   or a new LoRA on the base model. Its base must be the configured model.
2. **select** (:func:`feedback.selection.select`) the champion's confident answers and the
   accepted corrections that arrived since the last refresh that consumed its window (every
   outcome but ``failed`` and a too-small dataset), plus a replay sample from the datasets the
   champion's lineage was trained on. Nothing selected: a recorded ``no-op``.
3. **curate** (:func:`feedback.curation.curate_to_dir`) into ``<work_dir>/<run>/dataset``
   (``train.jsonl``, ``held_out.jsonl``, ``manifest.json``). Fewer than
   ``refresh.min_train_examples`` training or ``refresh.min_held_out`` held-out examples: a
   recorded ``no-op`` that leaves the window for the next refresh.
4. **train** (:func:`feedback.train_job.run_training`): a subprocess at lower priority that
   resumes from its checkpoint after a crash. A run that cannot finish is ``failed``: nothing is
   registered, the champion is untouched, the window stays for the next refresh.
5. **gate** (:func:`evaluation.gate.evaluate_candidate`) against the champion on the fresh
   held-out split and the frozen golden set.
6. **register** the adapter (content-addressed, lineage: parent, dataset, training, gate, selection)
   as ``candidate``, or ``rejected`` with the gate's reasons; the selected interactions are marked
   used (``training_uses``) either way, so no later refresh takes them again.
7. **deploy** (one challenger at a time): a passing candidate becomes the shadow challenger,
   replacing a challenger still in shadow (``superseded``); while a challenger is in an A/B ramp it
   ``waiting``s, and the newest waiting candidate goes next when the ramp ends
   (:meth:`Refresher.deploy_waiting`), older ones ``superseded``.

Every outcome, with the numbers of each step and its seconds, is stored in the ledger
(``<registry>/refreshes/<date>.json``) and returned. A dry run does steps 1 to 3 into a temporary
directory and reports what would be trained, claiming and marking nothing.
"""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from evaluation.gate import GateVerdict, SplitScores, evaluate_candidate
from evaluation.tuning.best import tuned_training
from evaluation.tuning.study import TuningError
from feedback.curation import HELD_OUT_FILE, TRAIN_FILE, curate_to_dir
from feedback.deployments import DeploymentError, DeploymentState, join_version, set_challenger, split_version
from feedback.errors import FlywheelError, RegistryError
from feedback.events import utc_now
from feedback.examples import Example, read_examples
from feedback.model.runtime import ModelRuntime, model_name
from feedback.model.source import prepare_model
from feedback.registry import AdapterRegistry
from feedback.selection import Selection, mark_used, select
from feedback.settings import Settings, TrainingSettings
from feedback.store import DuckDBStore
from feedback.train_job import run_training
from feedback.training import TrainingError, TrainingJob, TrainingResult, total_steps

log = logging.getLogger(__name__)

BY = "refresh"  # the principal that deploys a refresh's candidate
DATASET_DIR, TRAINING_DIR = "dataset", "training"
# outcomes after which the window of data is consumed: the next refresh starts where this one ended
CONSUMED = ("deployed", "waiting", "superseded", "rejected", "no-op")


class RefreshBusy(FlywheelError):
    """A refresh is already running in this worker."""


class RefreshRefused(FlywheelError):
    """The refresh may not start (its date already ran, or its key is not a date)."""


@dataclass
class RefreshRun:
    """A refresh in progress or finished: its key, its run id, the step it is in, its outcome."""

    key: str
    run: str
    forced_by: str | None = None
    stage: str = "starting"
    started_at: str = field(default_factory=lambda: utc_now().isoformat())
    outcome: dict[str, Any] | None = None


class _Stop(Exception):
    def __init__(self, status: str, message: str, *, consumed: bool = True) -> None:
        super().__init__(message)
        self.status, self.message, self.consumed = status, message, consumed


class Refresher:
    """Runs refreshes for one worker: on the schedule, on demand, or as a dry run."""

    def __init__(
        self,
        settings: Settings,
        store: DuckDBStore,
        *,
        deployment: Callable[[], DeploymentState],
        publish: Callable[[DeploymentState], DeploymentState],
        echo: IO[str] | None = sys.stderr,
        finished: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        """``deployment`` returns the current state; ``publish`` writes a new one and returns it once applied.

        Registry states follow a published deployment through the worker's deployments follower
        (:func:`feedback.registry.follow_deployment`), which has applied it when ``publish`` returns.
        ``finished`` is told every outcome (the worker audits it as the decision engine's).
        """
        self.settings = settings
        self.store = store
        self.registry = AdapterRegistry(settings.model.registry_dir)
        self._deployment = deployment
        self._publish = publish
        self._echo = echo
        self._finished = finished
        self._busy = threading.Lock()
        self.current: RefreshRun | None = None  # the latest run this worker started

    def today(self) -> str:
        """Today's refresh key: the date in the scheduler's time zone."""
        return datetime.now(ZoneInfo(self.settings.scheduler.timezone)).date().isoformat()

    def run(
        self, key: str, *, forced_by: str | None = None, claimed: Callable[[RefreshRun], object] | None = None
    ) -> dict[str, Any]:
        """Claim ``key`` and run the refresh here; returns its outcome (also stored in the ledger).

        ``claimed`` is told the run once it is claimed (the scheduler audits its start).

        Raises:
            RefreshBusy: a refresh is already running in this worker.
            RefreshRefused: the date already ran and no admin forces it, or ``key`` is not a date.
        """
        run = self._claim(key, forced_by)
        try:
            if claimed is not None:
                claimed(run)
            return self._run(run)
        finally:
            self._busy.release()

    def start(self, key: str, *, forced_by: str | None = None) -> RefreshRun:
        """Claim ``key`` now (refusals raise here) and run the refresh in a thread; returns the run."""
        run = self._claim(key, forced_by)

        def work() -> None:
            try:
                self._run(run)
            finally:
                self._busy.release()

        threading.Thread(target=work, name=f"refresh-{run.run}", daemon=True).start()
        return run

    def dry_run(self) -> dict[str, Any]:
        """What a refresh now would select and train on (steps 1-3 into a temporary directory)."""
        if not self._busy.acquire(blocking=False):
            raise RefreshBusy("a refresh is running in this worker; try the dry run when it ends")
        try:
            with tempfile.TemporaryDirectory(prefix="flywheel-dry-run-") as tmp:
                run = RefreshRun(key=self.today(), run="dry-run")
                outcome: dict[str, Any] = {"key": run.key, "run": run.run, "seconds": {}}
                try:
                    prepared = self._prepare(run, outcome, Path(tmp))
                except _Stop as stop:
                    return outcome | {"status": "dry-run", "message": f"a refresh now would be a {stop.status}: {stop}"}
                examples = prepared.train_examples
                outcome["plan"] = {
                    "train_examples": examples,
                    "steps": total_steps(examples, prepared.training),
                    "parent_adapter": prepared.parent_version,
                    "training": prepared.training.model_dump(mode="json"),
                    "tuning": prepared.tuning,
                }
                return outcome | {"status": "dry-run", "message": f"a refresh now would train on {examples} examples"}
        finally:
            self._busy.release()

    @contextmanager
    def holding(self, what: str) -> Iterator[None]:
        """Run ``what`` (the weekly study) while no refresh runs here, and start none meanwhile.

        Raises:
            RefreshBusy: a refresh is running in this worker.
        """
        if not self._busy.acquire(blocking=False):
            raise RefreshBusy(f"a refresh is running in this worker; {what} waits for its next time")
        try:
            yield
        finally:
            self._busy.release()

    def status(self, key: str) -> dict[str, Any]:
        """The ledger's record of ``key``, with the running step when this worker runs it now."""
        try:
            record = self.registry.refresh(key)
        except RegistryError as exc:
            raise RefreshRefused(str(exc)) from exc
        current = self.current
        if current is not None and current.key == key and current.outcome is None:
            record = record | {"running": {"run": current.run, "stage": current.stage}}
        return record

    def deploy_waiting(self) -> str | None:
        """Deploy the newest waiting candidate once no challenger runs; returns its version, or None.

        A candidate waits while a challenger is in an A/B ramp. It goes next only when it was
        trained from the champion still serving (a promotion makes it stale: ``superseded``).
        """
        state = self._deployment()
        if state.challenger is not None:
            return None
        waiting = self._waiting()
        if not waiting:
            return None
        newest, older = waiting[-1], waiting[:-1]
        for record in older:
            self.registry.set_state(record["version"], "superseded")
        if newest.get("parent") != split_version(state.champion)[1]:
            self.registry.set_state(newest["version"], "superseded")
            return None
        version = join_version(newest["base"], newest["version"])
        self._publish(set_challenger(state, version, by=BY, sample_rate=self.settings.refresh.shadow_sample_rate))
        return str(newest["version"])

    def _claim(self, key: str, forced_by: str | None) -> RefreshRun:
        if not self._busy.acquire(blocking=False):
            running = self.current.run if self.current else "one"
            raise RefreshBusy(f"the refresh {running} is running in this worker; wait for it to end")
        try:
            record = self.registry.claim_refresh(key, forced_by=forced_by)
        except RegistryError as exc:
            self._busy.release()
            raise RefreshRefused(str(exc)) from exc
        starts = len(record.get("starts", [])) or 1
        self.current = RefreshRun(key=key, run=key if starts == 1 else f"{key}.{starts}", forced_by=forced_by)
        return self.current

    def _run(self, run: RefreshRun) -> dict[str, Any]:
        outcome: dict[str, Any] = {"key": run.key, "run": run.run, "forced_by": run.forced_by, "seconds": {}}
        try:
            self._execute(run, outcome)
        except _Stop as stop:
            outcome |= {"status": stop.status, "message": stop.message}
            if stop.consumed:
                outcome["window_until"] = outcome.get("until")
        except Exception as exc:  # anything unexpected still ends as a recorded failure, champion untouched
            log.exception("refresh %s failed", run.run)
            outcome |= {"status": "failed", "message": f"unexpected error: {type(exc).__name__}: {exc}"}
        run.stage, run.outcome = "finished", outcome
        self.registry.finish_refresh(run.key, outcome)
        if self._finished is not None:
            self._finished(outcome)
        log.info("refresh %s: %s (%s)", run.run, outcome["status"], outcome["message"])
        return outcome

    def _execute(self, run: RefreshRun, outcome: dict[str, Any]) -> None:
        run_dir = self.settings.refresh.work_dir / run.run
        prepared = self._prepare(run, outcome, run_dir)
        with self._step(run, outcome, "train"):
            result = self._train(prepared, run_dir)
        outcome["training"] = _training_summary(result)
        with self._step(run, outcome, "gate"):
            verdict = evaluate_candidate(
                prepared.model_dir,
                result.adapter_dir,
                read_examples(prepared.dataset_dir / HELD_OUT_FILE),
                champion=prepared.parent_dir,
                settings=self.settings.gate,
            )
        outcome["gate"] = gate_summary(verdict)
        with self._step(run, outcome, "register"):
            version = self.registry.register(
                result.adapter_dir,
                dataset_manifest=prepared.manifest,
                lineage=self._lineage(run, prepared, outcome, verdict),
            )
            outcome |= {"version": version, "model_version": join_version(prepared.base, version)}
            outcome["marked_used"] = mark_used(self.store, prepared.selection, run.key)
        if not verdict.passed:
            raise _Stop("rejected", "the gate refused the candidate: " + "; ".join(r.message for r in verdict.reasons))
        if not self.settings.refresh.deploy:
            raise _Stop("waiting", "the candidate passed the gate; refresh.deploy is off, so it waits for an admin")
        with self._step(run, outcome, "deploy"):
            status, message = self._deploy(prepared, version)
        raise _Stop(status, message)

    def _prepare(self, run: RefreshRun, outcome: dict[str, Any], run_dir: Path) -> _Prepared:
        with self._step(run, outcome, "select"):
            state = self._deployment()
            base, parent_version = split_version(state.champion)
            model_dir = prepare_model(self.settings.model.source, self.settings.model.cache_dir)
            if model_name(model_dir) != base:
                raise _Stop(
                    "failed",
                    f"the champion {state.champion!r} runs on the base model {base!r}, but the refresh trains "
                    f"{model_name(model_dir)!r} (model.source)",
                    consumed=False,
                )
            parent_dir = self._parent(parent_version)
            since, until = self._since(), utc_now()
            outcome |= {"champion": state.champion, "since": since and since.isoformat(), "until": until.isoformat()}
            selection = select(
                self.store,
                self.settings.selection,
                champion=state.champion,
                since=since,
                until=until,
                earlier_datasets=self._lineage_datasets(parent_version),
            )
            outcome["selection"] = {"examples": len(selection.examples), **selection.counts, "strata": selection.strata}
            if not selection.examples:
                raise _Stop("no-op", f"nothing to train on: no confident answer or accepted correction since {since}")
        with self._step(run, outcome, "curate"):
            examples = [Example(s.id, tuple(s.messages), s.completion, s.source) for s in selection.examples]  # type: ignore[arg-type]
            runtime = ModelRuntime.load(model_dir, threads=self.settings.training.threads)
            dataset_dir = run_dir / DATASET_DIR
            manifest = curate_to_dir(examples, runtime, self.settings.curation, dataset_dir)
            del runtime
            files = manifest["files"]
            outcome["curation"] = {"stages": manifest["stages"], "output": manifest["output"], "files": files}
            train_n, held_n = int(files["train"]["examples"]), int(files["held_out"]["examples"])
            settings = self.settings.refresh
            if train_n < settings.min_train_examples or held_n < settings.min_held_out:
                raise _Stop(
                    "no-op",
                    f"too few curated examples: {train_n} to train (at least {settings.min_train_examples}) and "
                    f"{held_n} held out (at least {settings.min_held_out}); they stay for the next refresh",
                    consumed=False,
                )
        tuned = self._tuned()
        outcome["tuning"] = tuned[1]
        return _Prepared(base, parent_version, parent_dir, model_dir, selection, dataset_dir, manifest, train_n, *tuned)

    def _tuned(self) -> tuple[TrainingSettings, dict[str, Any] | None]:
        """The newest study's best training settings (``flywheel tune``) when one has a result, else the configured."""
        try:
            tuned = tuned_training(self.settings)
        except TuningError as exc:  # a broken study file must not stop the daily refresh: it trains as configured
            log.warning("the refresh trains with the configured settings: %s", exc)
            return self.settings.training, {"error": str(exc)}
        return (self.settings.training, None) if tuned is None else (tuned.training, tuned.record)

    def _parent(self, version: str | None) -> Path | None:
        if version is None:
            return None
        try:
            return self.registry.fetch(version)
        except RegistryError as exc:
            raise _Stop("failed", f"the champion's adapter cannot be trained from: {exc}", consumed=False) from exc

    def _train(self, prepared: _Prepared, run_dir: Path) -> TrainingResult:
        job = TrainingJob(
            dataset=prepared.dataset_dir / TRAIN_FILE,
            output_dir=run_dir / TRAINING_DIR,
            model_dir=prepared.model_dir,
            parent_adapter=prepared.parent_dir,
            settings=prepared.training,
        )
        try:
            return run_training(job, echo=self._echo)
        except TrainingError as exc:
            raise _Stop(
                "failed", f"training failed, nothing registered, the champion is untouched: {exc}", consumed=False
            ) from exc

    def _deploy(self, prepared: _Prepared, version: str) -> tuple[str, str]:
        state = self._deployment()
        if split_version(state.champion)[1] != prepared.parent_version:
            self.registry.set_state(version, "superseded")
            return "superseded", f"the champion changed to {state.champion!r} while this candidate trained"
        if state.challenger is not None and state.mode == "ab":
            for record in self._waiting():
                if record["version"] != version:
                    self.registry.set_state(record["version"], "superseded")
            return (
                "waiting",
                f"the challenger {state.challenger!r} is in its A/B ramp ({state.phase}); this candidate goes next",
            )
        model_version = join_version(prepared.base, version)
        try:
            applied = self._publish(
                set_challenger(state, model_version, by=BY, sample_rate=self.settings.refresh.shadow_sample_rate)
            )
        except (DeploymentError, FlywheelError) as exc:
            return "waiting", f"the candidate passed the gate but could not be deployed: {exc}"
        return "deployed", f"{model_version} is the shadow challenger (deployment {applied.deployment_id})"

    def _waiting(self) -> list[dict[str, Any]]:
        """Candidates that passed their gate and were not deployed, oldest first."""
        return [r for r in self.registry.versions() if r.get("state") == "candidate" and r.get("gate_passed")]

    def _since(self) -> datetime | None:
        outcomes = [
            o for r in self.registry.refreshes() for o in [*r.get("earlier_outcomes", []), r.get("outcome")] if o
        ]
        ends = [o.get("window_until") for o in outcomes]
        latest = max((e for e in ends if e), default=None)
        return None if latest is None else datetime.fromisoformat(latest)

    def _lineage_datasets(self, version: str | None) -> list[Path]:
        """The training sets of the champion's lineage, oldest first (the replay sample's source)."""
        datasets: list[Path] = []
        seen: set[str] = set()
        while version is not None and version not in seen:
            seen.add(version)
            try:
                record = self.registry.lineage(version)
            except RegistryError:
                break
            dataset = record.get("dataset_dir")
            if dataset and (Path(dataset) / TRAIN_FILE).is_file():
                datasets.append(Path(dataset) / TRAIN_FILE)
            version = record.get("parent")
        return datasets[::-1]

    def _lineage(
        self, run: RefreshRun, prepared: _Prepared, outcome: dict[str, Any], verdict: GateVerdict
    ) -> dict[str, Any]:
        return {
            "state": "candidate" if verdict.passed else "rejected",
            "base": prepared.base,
            "parent": prepared.parent_version,
            "refresh": run.run,
            "dataset_dir": str(prepared.dataset_dir.resolve()),
            "selection": {k: v for k, v in outcome["selection"].items() if k != "strata"},
            "training": {"settings": prepared.training.model_dump(mode="json"), **outcome["training"]},
            "tuning": prepared.tuning,  # the study whose best settings it trained with; None: the configured ones
            "gate_passed": verdict.passed,
            "gate": outcome["gate"],
            "code_version": importlib.metadata.version("flywheel"),
        }

    @contextmanager
    def _step(self, run: RefreshRun, outcome: dict[str, Any], name: str) -> Iterator[None]:
        run.stage = name
        started = time.perf_counter()
        try:
            yield
        finally:
            outcome["seconds"][name] = round(time.perf_counter() - started, 3)


@dataclass(frozen=True)
class _Prepared:
    base: str
    parent_version: str | None
    parent_dir: Path | None
    model_dir: Path
    selection: Selection
    dataset_dir: Path
    manifest: dict[str, Any]
    train_examples: int
    training: TrainingSettings  # the settings it trains with (a study's best, or the configured ones)
    tuning: dict[str, Any] | None  # which study's best they are


def gate_summary(verdict: GateVerdict) -> dict[str, Any]:
    """The gate's decision and the means it rests on (per-example numbers stay out of the ledger)."""

    def means(scores: SplitScores | None) -> dict[str, Any] | None:
        if scores is None:
            return None
        mean = SplitScores.mean
        return {
            "n": len(scores.ids),
            "champion_loss": mean(scores.champion_loss),
            "candidate_loss": mean(scores.candidate_loss),
            "metric": scores.metric,
            "champion_task": mean(scores.champion_task) if scores.champion_task else None,
            "candidate_task": mean(scores.candidate_task) if scores.candidate_task else None,
        }

    return {
        "passed": verdict.passed,
        "reasons": [asdict(r) for r in verdict.reasons],
        "heldout": means(verdict.heldout),
        "golden": means(verdict.golden),
        "loss_test": None if verdict.loss_test is None else asdict(verdict.loss_test),
        "control_test": None if verdict.control_test is None else asdict(verdict.control_test),
        "task_test": None if verdict.task_test is None else asdict(verdict.task_test),
    }


def _training_summary(result: TrainingResult) -> dict[str, Any]:
    curve = result.loss_curve
    return {
        "steps": result.steps,
        "examples": result.examples,
        "tokens": result.tokens,
        "first_loss": curve[0] if curve else None,
        "last_loss": curve[-1] if curve else None,
        "loss_curve": list(curve),  # each optimizer step's mean completion loss (the dashboard draws it)
        "resumed_from_step": result.resumed_from_step,
        "device": result.device,
        "seconds": result.seconds,
    }
