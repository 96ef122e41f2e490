"""Synthetic experiment data for the evaluation tests, written into real DuckDB files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from feedback.store import DuckDBStore

START = datetime(2026, 11, 1, tzinfo=UTC)


def synthetic_rows(
    *,
    experiment: str = "exp-1",
    phase: str = "ab-50",
    units: int = 400,
    share: float = 0.5,
    per_unit: int = 3,
    lift: float = 0.0,
    seed: int = 7,
    shadow: bool = False,
    day: int = 0,
) -> dict[str, list[Any]]:
    """Columns of interaction rows; ``feedback`` columns under keys prefixed ``fb_``.

    Each unit sends ``per_unit`` requests (Poisson around it, at least 1); the challenger's latency
    is multiplied by ``1 + lift``. With ``shadow``, every request has a served champion row and a
    shadow challenger row with the same interaction id. Rows span the 7 days from ``START + day``.
    """
    rng = np.random.default_rng(seed)
    cols: dict[str, list[Any]] = {k: [] for k in ROW_KEYS}
    fb: dict[str, list[Any]] = {k: [] for k in FB_KEYS}
    for u in range(units):
        arm = "challenger" if (not shadow and rng.random() < share) else "champion"
        for r in range(max(1, int(rng.poisson(per_unit)))):
            iid = f"{experiment}-{phase}-{u}-{r}"
            ts = START + timedelta(days=day, hours=float(rng.uniform(0, 24 * 7)))
            arms = [("champion", "served"), ("challenger", "shadow")] if shadow else [(arm, "served")]
            for this_arm, role in arms:
                scale = 1 + lift if this_arm == "challenger" else 1.0
                _add_row(cols, rng, iid, f"u{u}", this_arm, role, experiment, phase, ts, scale)
            if rng.random() < 0.6:
                up = rng.random() < (0.7 + (lift if arm == "challenger" else 0))
                fb["fb_id"].append(f"f-{iid}")
                fb["fb_interaction"].append(iid)
                fb["fb_thumb"].append("up" if up else "down")
                fb["fb_rating"].append(int(rng.integers(1, 6)))
                fb["fb_correction"].append("fixed" if rng.random() < 0.1 else None)
                fb["fb_ts"].append(ts)
    return cols | fb


ROW_KEYS = (
    "interaction_id", "unit_id", "arm", "role", "deployment_id", "phase", "ts",
    "latency_ms", "completion_tokens", "confidence", "error", "completion",
)  # fmt: skip
FB_KEYS = ("fb_id", "fb_interaction", "fb_thumb", "fb_rating", "fb_correction", "fb_ts")


def _add_row(
    cols: dict[str, list[Any]], rng: np.random.Generator, iid: str, unit: str, arm: str, role: str,
    experiment: str, phase: str, ts: datetime, scale: float,
) -> None:  # fmt: skip
    words = int(rng.integers(3, 12))
    values = {
        "interaction_id": iid, "unit_id": unit, "arm": arm, "role": role, "deployment_id": experiment,
        "phase": phase, "ts": ts, "latency_ms": float(rng.lognormal(5, 0.5)) * scale,
        "completion_tokens": int(rng.integers(5, 60)), "confidence": float(rng.beta(8, 2)),
        "error": "timeout" if rng.random() < 0.03 else None,
        "completion": " ".join(f"w{int(w)}" for w in rng.integers(0, 8, words)),
    }  # fmt: skip
    for key, value in values.items():
        cols[key].append(value)


INSERT_INTERACTIONS = """
INSERT INTO interactions (event_id, schema_version, ts, interaction_id, request_id, unit_id, arm, role,
    model_version, deployment_id, phase, messages, completion, prompt_tokens, completion_tokens, latency_ms,
    confidence, error, kafka_partition, kafka_offset)
SELECT interaction_id || '-' || role, 1, ts, interaction_id, interaction_id, unit_id, arm, role,
    arm || '-v1', deployment_id, phase, '[]', completion, 10, completion_tokens, latency_ms,
    confidence, error, 0, row_number() OVER ()
FROM rows_in
"""
INSERT_FEEDBACK = """
INSERT INTO feedback (feedback_id, event_id, schema_version, ts, interaction_id, thumb, rating, correction,
    kafka_partition, kafka_offset)
SELECT fb_id, fb_id, 1, fb_ts, fb_interaction, fb_thumb, fb_rating, fb_correction, 0, row_number() OVER ()
FROM fb_in
"""


def write_rows(path: Path, data: dict[str, list[Any]]) -> None:
    """Insert synthetic columns into the migrated DuckDB file at ``path``."""
    DuckDBStore(path).close()  # create and migrate
    con = duckdb.connect(str(path))
    try:
        con.register("rows_in", pa.table({k: data[k] for k in ROW_KEYS}))
        con.execute(INSERT_INTERACTIONS)
        fb = {k: data[k] for k in FB_KEYS}
        if fb["fb_id"]:
            con.register("fb_in", pa.table(fb))
            con.execute(INSERT_FEEDBACK)
    finally:
        con.close()
