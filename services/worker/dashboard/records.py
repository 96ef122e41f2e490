"""The models, refresh history and feedback views: the registry, the refresh ledger and recent feedback.

Models: every registry version as a node of the lineage graph (parent to child) with its dataset
manifest, training settings, gate metrics and state. Refreshes: each ledger record's selection and
curation counts per stage, training summary (with each step's loss, which the page draws as a
curve) and gate result. Feedback: the latest feedback rows with their response's arm and model,
text PII-redacted, filtered in SQL.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from feedback.pii import redact
from feedback.registry import DATASET_MANIFEST, AdapterRegistry, adapter_of
from feedback.store import DuckDBStore

FeedbackKind = Literal["any", "up", "down", "rating", "comment", "correction"]
KIND_SQL: dict[str, str] = {  # fixed SQL fragments, chosen by a validated kind
    "any": "TRUE",
    "up": "f.thumb = 'up'",
    "down": "f.thumb = 'down'",
    "rating": "f.rating IS NOT NULL",
    "comment": "f.comment IS NOT NULL AND f.comment <> ''",
    "correction": "f.correction IS NOT NULL AND f.correction <> ''",
}
# the latest matching feedback first (a top-N over the feedback table), then only those rows' responses
FEEDBACK_SQL = """
WITH recent AS (
    SELECT * FROM feedback f
    WHERE {kind} AND (?::VARCHAR IS NULL OR f.comment ILIKE ? OR f.correction ILIKE ? OR f.interaction_id = ?)
    ORDER BY f.ts DESC, f.feedback_id LIMIT ?
)
SELECT r.feedback_id, r.ts, r.interaction_id, r.thumb, r.rating, r.comment, r.correction,
       i.arm, i.model_version, i.phase, i.deployment_id, i.completion
FROM recent r LEFT JOIN interactions i ON i.interaction_id = r.interaction_id AND i.role = 'served'
WHERE ?::VARCHAR IS NULL OR i.arm = ?
ORDER BY r.ts DESC, r.feedback_id LIMIT ?
"""
ARM_FILTER_WINDOW = 10  # with an arm filter, look at this many times ``limit`` of the latest feedback
LINEAGE_FIELDS = ("version", "parent", "base", "state", "created", "refresh", "dataset_hash", "gate_passed")


def models_view(registry: AdapterRegistry, champion: str, challenger: str | None) -> dict[str, Any]:
    """The registry's versions (oldest first) and the lineage edges, marking the deployed ones."""
    deployed = {adapter_of(challenger): "challenger", adapter_of(champion): "champion"}
    nodes = []
    for record in registry.versions():
        version = record["version"]
        nodes.append(
            {field: record.get(field) for field in LINEAGE_FIELDS}
            | {
                "deployed": deployed.get(version),
                "selection": record.get("selection"),
                "training": record.get("training"),
                "gate": record.get("gate"),
                "history": record.get("history", []),
                "dataset_manifest": _manifest(registry, version),
            }
        )
    edges = [{"parent": n["parent"], "child": n["version"]} for n in nodes if n["parent"]]
    return {"versions": nodes, "edges": edges, "champion": champion, "challenger": challenger}


def _manifest(registry: AdapterRegistry, version: str) -> dict[str, Any] | None:
    try:
        manifest: dict[str, Any] = json.loads((registry.root / version / DATASET_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest


def refreshes_view(registry: AdapterRegistry) -> list[dict[str, Any]]:
    """Every refresh in the ledger, newest first, reduced to what the page draws."""
    runs = []
    for record in reversed(registry.refreshes()):
        outcome = record.get("outcome") or {}
        runs.append(
            {
                "key": record["key"],
                "starts": record.get("starts", []),
                "finished": record.get("finished"),
                "status": outcome.get("status", "running"),
                "message": outcome.get("message"),
                "version": outcome.get("version"),
                "selection": {k: v for k, v in (outcome.get("selection") or {}).items() if k != "strata"},
                "curation": (outcome.get("curation") or {}).get("stages"),
                "training": outcome.get("training"),
                "gate": outcome.get("gate"),
                "seconds": outcome.get("seconds"),
            }
        )
    return runs


def feedback_view(
    store: DuckDBStore, kind: FeedbackKind, arm: str | None, query: str | None, limit: int
) -> list[dict[str, Any]]:
    """The latest feedback matching the filters, newest first, every text PII-redacted.

    With an arm filter, only the latest ``ARM_FILTER_WINDOW`` times ``limit`` matching rows are searched for it.
    """
    like = None if not query else f"%{query}%"
    window = limit * ARM_FILTER_WINDOW if arm else limit
    params = [query or None, like, like, query, window, arm, arm, limit]
    rows = store.query(FEEDBACK_SQL.format(kind=KIND_SQL[kind]), params)
    for row in rows:
        row["ts"] = row["ts"].isoformat()
        for field in ("comment", "correction", "completion"):
            row[field] = None if row[field] is None else redact(row[field])
    return rows
