"""The worker's rollup thread: refreshes at start and then every ``worker.rollup_interval_s``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pipeline_events import interaction

from feedback.events import FeedbackEvent
from feedback.settings import Settings, WorkerSettings
from feedback.store import DuckDBStore, Located
from services.worker.app import run_rollup_forever

UNITS = "SELECT unit_id, sum(responses) AS responses, sum(ups) AS ups FROM unit_rollup GROUP BY ALL ORDER BY ALL"


def wait_for(condition: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.02)
    return False


def test_the_thread_rolls_up_what_the_sink_stores(tmp_path: Path) -> None:
    store = DuckDBStore(tmp_path / "worker.duckdb")
    first, second = interaction(1, interaction_id="ix-1"), interaction(2, interaction_id="ix-2")
    store.write_batch([Located(first, "interactions", 0, 0)])
    settings = Settings(worker=WorkerSettings(rollup_interval_s=0.05))
    stop = threading.Event()
    thread = threading.Thread(target=run_rollup_forever, args=(store, settings, stop), daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: store.query("SELECT interactions_rows AS n FROM rollup_watermark")[0]["n"] == 1)
        later = [second, FeedbackEvent(feedback_id="f1", interaction_id="ix-1", thumb="up")]
        store.write_batch([Located(e, "t", 0, 1 + k) for k, e in enumerate(later)])
        assert wait_for(lambda: store.query("SELECT feedback_rows AS n FROM rollup_watermark")[0]["n"] == 1)
        assert store.query(UNITS) == [
            {"unit_id": first.unit_id, "responses": 1, "ups": 1},
            {"unit_id": second.unit_id, "responses": 1, "ups": 0},
        ]
    finally:
        stop.set()
        thread.join(timeout=10)
        store.close()
    assert not thread.is_alive()
