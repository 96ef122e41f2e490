"""The worker application: owns the DuckDB file, runs the sink, answers queries on live data."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI

from feedback.apikeys import KeyBook, KeyWatcher
from feedback.audit import AuditTrail
from feedback.deployments import DeploymentError, DeploymentState, DeploymentWatcher, initial_state, publish_state
from feedback.errors import FlywheelError
from feedback.lease import KafkaLease
from feedback.model.runtime import model_name
from feedback.model.source import prepare_model
from feedback.producer import open_producer
from feedback.registry import AdapterRegistry, follow_deployment
from feedback.rollup import refresh_rollup
from feedback.settings import Settings, get_settings
from feedback.store import DuckDBStore
from services.http_access import AuthOffHeader, warn_if_auth_off
from services.worker.audit import install_audit
from services.worker.audit import router as audit_router
from services.worker.audit_events import deployment_published, record, refresh_decided, refresh_started
from services.worker.dashboard.routes import router as dashboard_router
from services.worker.dashboard.views import DashboardViews
from services.worker.loops import run_lake_forever, run_sink_forever
from services.worker.metrics import WorkerMetrics
from services.worker.refresh import RefreshBusy, Refresher, RefreshRefused
from services.worker.refresh_api import router as refresh_router
from services.worker.refresh_schedule import RefreshSchedule
from services.worker.registry_api import router as registry_router
from services.worker.reports import router as reports_router
from services.worker.routes import router
from services.worker.shard import open_ingest
from services.worker.status import EndOffsets, partition_lags
from services.worker.weekly_study import run_weekly_study

log = logging.getLogger(__name__)

_KEYS_WAIT_SECONDS = 5.0  # at start, wait this long to read the keys topic to its end


class Deployments:
    """The deployment state as this worker follows it, and the way it publishes a new one."""

    def __init__(self, settings: Settings, trail: AuditTrail | None = None) -> None:
        self._settings = settings
        self._trail = trail
        self._base: str | None = None
        # revision 0 is a placeholder until a record is read: :meth:`current` names the real base then
        self.watcher = DeploymentWatcher(
            settings.kafka, initial_state(settings.model.source, settings.gateway.ramp), self._applied
        )
        self.on_change: list[Callable[[DeploymentState], None]] = []
        self._registry = AdapterRegistry(settings.model.registry_dir)
        self._previous: DeploymentState | None = None

    def current(self) -> DeploymentState:
        """The latest state on the deployments topic, or the configured base model alone before any."""
        state = self.watcher.state
        if state.revision > 0:
            return state
        if self._base is None:  # converted once and cached; later calls only read the manifest
            model = self._settings.model
            self._base = model_name(prepare_model(model.source, model.cache_dir))
        return initial_state(self._base, self._settings.gateway.ramp)

    def publish(self, state: DeploymentState) -> DeploymentState:
        """Publish ``state`` and return it once this worker has read it back.

        Raises:
            DeploymentError: another change with the same revision won, or it was not seen in time.
            KafkaUnavailableError: the broker did not take it.
        """
        before = self.current()
        publish_state(self._settings.kafka, state)
        record(self._trail, deployment_published(before, state))
        if not self.watcher.wait_for(state.revision, self._settings.refresh.publish_timeout_s):
            raise DeploymentError(f"deployment revision {state.revision} was not read back in time")
        if self.watcher.state.deployment_id != state.deployment_id:
            raise DeploymentError("a concurrent deployment change took the same revision; try again")
        return state

    def _applied(self, state: DeploymentState) -> None:
        # the registry's states follow every record (replays change nothing), whoever made the change
        follow_deployment(self._registry, self._previous, state)
        self._previous = state
        for callback in self.on_change:
            callback(state)


def run_refresh(refresher: Refresher, key: str, trail: AuditTrail | None = None) -> None:
    """The scheduled refresh of ``key`` (its start audited); a date that already ran or a busy worker is logged."""
    try:
        refresher.run(key, claimed=lambda run: record(trail, refresh_started(run.run)))
    except (RefreshBusy, RefreshRefused) as exc:
        record(trail, refresh_started(key, refused=str(exc)))
        log.info("scheduled refresh %s not started: %s", key, exc)


def run_rollup_forever(store: DuckDBStore, settings: Settings, stop: threading.Event) -> None:
    """Roll up new rows for reports now and then every ``worker.rollup_interval_s`` (``feedback.rollup``)."""
    while not stop.is_set():
        try:
            refresh_rollup(store)
        except FlywheelError as exc:  # reports stay exact meanwhile: they add the rows past the watermark
            log.warning("rollup refresh failed: %s", exc)
        stop.wait(settings.worker.rollup_interval_s)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the worker app; its lifespan opens DuckDB and starts the sink thread."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or get_settings()
        store = DuckDBStore(
            resolved.duckdb.path, memory_limit=resolved.duckdb.memory_limit, threads=resolved.duckdb.threads
        )
        producer = open_producer(resolved, resolved.audit.wal_dir or resolved.duckdb.path.parent / "audit-wal")
        producer.start()
        trail = AuditTrail(producer, resolved.kafka.topics.audit)
        ingest = open_ingest(resolved, store)  # one shard of several when worker.sink_shard is set
        sink, lake = ingest.sink, ingest.lake
        stop = threading.Event()
        deployments = Deployments(resolved, trail)
        refresher = Refresher(
            resolved,
            store,
            deployment=deployments.current,
            publish=deployments.publish,
            finished=lambda outcome: _refresh_ended(outcome, trail, metrics),
        )
        end_offsets = EndOffsets(resolved.kafka)
        metrics = WorkerMetrics(
            lambda: sink.stats,
            functools.partial(partition_lags, end_offsets, sink.topics, store),
            lambda: refresher.current is not None and refresher.current.outcome is None,
        )
        lease = KafkaLease(
            resolved.kafka,
            name=resolved.kafka.client_id,
            session_timeout_ms=resolved.scheduler.lease_session_timeout_ms,
        )
        deployments.on_change.append(_waiting_deployer(refresher, deployments, lease.held))
        schedule = RefreshSchedule(resolved.scheduler, lease.held, lambda key: run_refresh(refresher, key, trail))
        if resolved.tuning.schedule_enabled:
            study = functools.partial(run_weekly_study, refresher, deployments.current)
            schedule.add_study(resolved.tuning.cron, study, resolved.scheduler.misfire_grace_s)
        threads = [
            threading.Thread(target=run_sink_forever, args=(sink, resolved, stop), name="sink", daemon=True),
            threading.Thread(
                target=run_lake_forever, args=(lake, resolved, stop, trail, ingest.exported), name="lake", daemon=True
            ),
            threading.Thread(target=run_rollup_forever, args=(store, resolved, stop), name="rollup", daemon=True),
        ]
        if resolved.scheduler.enabled:
            threads.append(threading.Thread(target=lease.run, name="refresh-lease", daemon=True))
        app.state.settings, app.state.store, app.state.sink, app.state.lake = resolved, store, sink, lake
        app.state.refresher, app.state.deployments, app.state.audit = refresher, deployments, trail
        app.state.metrics, app.state.end_offsets = metrics, end_offsets
        app.state.dashboard = DashboardViews(store, resolved)  # cached views, computed in the background
        key_watcher = KeyWatcher(resolved.kafka, KeyBook())
        app.state.keys = key_watcher.book
        warn_if_auth_off(resolved, "worker")
        for thread in threads:
            thread.start()
        deployments.watcher.start()
        key_watcher.start()
        await asyncio.to_thread(key_watcher.caught_up.wait, _KEYS_WAIT_SECONDS)
        if resolved.scheduler.enabled:
            schedule.start()
        try:
            yield
        finally:
            stop.set()
            if resolved.scheduler.enabled:
                schedule.stop()
            lease.stop()
            deployments.watcher.close()
            key_watcher.close()
            sink.stop()
            for thread in threads:
                thread.join(timeout=30)
            log.info("sink stopped: %s", asdict(sink.stats))
            end_offsets.close()
            app.state.dashboard.close()
            store.close()
            producer.close(timeout_s=resolved.gateway.drain_timeout_s)

    app = FastAPI(title="flywheel worker", lifespan=lifespan)
    app.add_middleware(AuthOffHeader)
    install_audit(app)
    app.include_router(router)
    app.include_router(audit_router)
    app.include_router(reports_router)
    app.include_router(refresh_router)
    app.include_router(registry_router)
    app.include_router(dashboard_router)
    return app


def _refresh_ended(outcome: dict[str, Any], trail: AuditTrail, metrics: WorkerMetrics) -> None:
    metrics.refresh_ended(outcome)
    record(trail, refresh_decided(outcome))


def _waiting_deployer(
    refresher: Refresher, deployments: Deployments, lease: threading.Event
) -> Callable[[DeploymentState], None]:
    """When a challenger's run ends, the lease holder deploys the newest waiting candidate.

    It runs in a thread of its own: publishing waits for the watcher, whose thread calls this.
    """
    had_challenger = False

    def on_change(state: DeploymentState) -> None:
        nonlocal had_challenger
        ended = had_challenger and state.challenger is None
        had_challenger = state.challenger is not None
        if ended and lease.is_set():
            args = (refresher, deployments, state.revision)
            threading.Thread(target=_deploy_waiting, args=args, name="deploy-waiting", daemon=True).start()

    return on_change


def _deploy_waiting(refresher: Refresher, deployments: Deployments, revision: int) -> None:
    deployments.watcher.wait_for(revision, 30)  # the watcher calls back before it stores the state
    try:
        version = refresher.deploy_waiting()
    except FlywheelError as exc:
        log.warning("the waiting candidate was not deployed: %s", exc)
        return
    if version is not None:
        log.info("the waiting candidate %s is the shadow challenger", version)
