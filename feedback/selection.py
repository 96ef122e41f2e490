"""Choosing the refresh's training examples from the live DuckDB file.

Two sources, both read from the rows that arrived in the refresh's window (``since`` < ``ts`` <=
``until``) and never from an interaction an earlier refresh used (``training_uses``):

- **confident answers**: the champion's served responses (no error) whose confidence is at least
  ``confidence_threshold`` and that got no negative feedback (a thumb down or a rating of 2 or
  less). The answer itself is the target. Answers with positive feedback (a thumb up or a rating
  of 4 or more) go first.
- **corrections**: corrected answers from feedback, the correction being the target. One user
  cannot steer the model: a correction counts when its author is trusted
  (``trusted_users``, until roles exist) or when at least ``agreement`` different users gave the
  same correction (compared case- and space-insensitively) to the same prompt; each user adds at
  most ``per_user_cap`` corrections per refresh (their earliest). An interaction with an accepted
  correction is not also taken as a confident answer.

At most ``daily_cap`` examples are taken. Corrections go first; the rest of the cap goes to
confident answers **in strata that match live traffic**: the window's served responses are cut
into ``strata`` prompt-length bands of equal traffic (quantiles of ``prompt_tokens``), and each
band gets a share of the cap equal to its share of the window's traffic, so short easy prompts,
which are answered with high confidence more often, cannot crowd out the rest. A band with too
few candidates leaves its share unused rather than over-filling another. Within a band, positive
feedback first, then a seeded hash of the interaction id (reproducible, not insertion order).

A **replay** sample from earlier datasets limits forgetting: ``replay_share`` of the new
examples' count, drawn (seeded) from the earlier datasets' examples.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from feedback.settings import SelectionSettings
from feedback.store import DuckDBStore

NEGATIVE = "thumb = 'down' OR rating <= 2"
POSITIVE = "thumb = 'up' OR rating >= 4"


@dataclass(frozen=True)
class Selected:
    """One chosen example, in the dataset's JSONL shape plus where it came from."""

    id: str  # the interaction id (or the replayed example's id)
    messages: list[dict[str, str]]
    completion: str
    source: str  # "confidence", "correction" or "replay"
    unit_id: str | None = None
    stratum: int | None = None  # the prompt-length band (confident answers only)
    prompt_tokens: int = 0
    positive: bool = False  # got positive feedback

    def record(self) -> dict[str, Any]:
        """The dataset line: id, messages, completion, source."""
        return {"id": self.id, "messages": self.messages, "completion": self.completion, "source": self.source}


@dataclass
class Selection:
    """What a refresh would train on, and the counts that explain it."""

    since: datetime | None
    until: datetime
    examples: list[Selected] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    strata: list[dict[str, Any]] = field(default_factory=list)  # bounds, live share, quota, taken

    @property
    def interaction_ids(self) -> list[str]:
        """The interactions this selection uses (replayed examples are not new uses)."""
        return [e.id for e in self.examples if e.source != "replay"]


def select(
    store: DuckDBStore,
    settings: SelectionSettings,
    *,
    champion: str,
    since: datetime | None,
    until: datetime,
    earlier_datasets: Sequence[Path] = (),
) -> Selection:
    """Choose the examples of one refresh (see the module docstring); reads only, writes nothing."""
    window = "{t}.ts <= ?" if since is None else "{t}.ts > ? AND {t}.ts <= ?"  # {t}: the table's alias
    bounds: list[Any] = [until] if since is None else [since, until]
    selection = Selection(since=since, until=until)
    counts = selection.counts

    corrections = _corrections(store, settings, window, bounds, counts)
    taken = corrections[: settings.daily_cap]
    counts["corrections_over_cap"] = len(corrections) - len(taken)
    corrected = {c.id for c in taken}

    in_window = window.format(t="i")
    served = store.query(
        f"SELECT prompt_tokens FROM interactions i WHERE role = 'served' AND model_version = ? AND {in_window}",  # noqa: S608 - fixed fragments
        [champion, *bounds],
    )
    counts["served_in_window"] = len(served)
    edges = _quantile_edges([int(r["prompt_tokens"]) for r in served], settings.strata)
    candidates = _confident(store, settings, champion, window, bounds, counts)
    candidates = [c for c in candidates if c.id not in corrected]
    room = settings.daily_cap - len(taken)
    confident, selection.strata = _stratified(candidates, served, edges, room, settings.seed)
    counts["confidence_selected"] = len(confident)
    counts["corrections_selected"] = len(taken)

    new = [*taken, *confident]
    replay = _replay(earlier_datasets, math.floor(len(new) * settings.replay_share), settings.seed)
    counts["replay_selected"] = len(replay)
    selection.examples = [*new, *replay]
    return selection


def mark_used(store: DuckDBStore, selection: Selection, refresh_key: str) -> int:
    """Record the selection's interactions as used by ``refresh_key``; returns how many were new."""
    ids = selection.interaction_ids
    if not ids:
        return 0
    before = store.query("SELECT count(*) AS n FROM training_uses")[0]["n"]
    store.execute(
        "INSERT OR IGNORE INTO training_uses (interaction_id, refresh_key) SELECT unnest(?::VARCHAR[]), ?",
        [ids, refresh_key],
    )
    return int(store.query("SELECT count(*) AS n FROM training_uses")[0]["n"]) - int(before)


def _confident(
    store: DuckDBStore,
    settings: SelectionSettings,
    champion: str,
    window: str,
    bounds: list[Any],
    counts: dict[str, int],
) -> list[Selected]:
    rows = store.query(
        f"""
        WITH fb AS (
            SELECT interaction_id, bool_or({NEGATIVE}) AS negative, bool_or({POSITIVE}) AS positive
            FROM feedback GROUP BY interaction_id
        )
        SELECT i.interaction_id, i.unit_id, i.messages, i.completion, i.prompt_tokens, i.confidence,
               coalesce(fb.negative, false) AS negative, coalesce(fb.positive, false) AS positive,
               u.interaction_id IS NOT NULL AS used
        FROM interactions i
        LEFT JOIN fb USING (interaction_id)
        LEFT JOIN training_uses u USING (interaction_id)
        WHERE i.role = 'served' AND i.model_version = ? AND i.error IS NULL
          AND i.confidence >= ? AND {window.format(t="i")}
        ORDER BY i.ts, i.interaction_id
        """,  # noqa: S608 - fixed fragments; values are bound
        [champion, settings.confidence_threshold, *bounds],
    )
    counts["confident_in_window"] = len(rows)
    counts["confident_negative_feedback"] = sum(1 for r in rows if r["negative"])
    counts["confident_already_used"] = sum(1 for r in rows if r["used"] and not r["negative"])
    return [
        Selected(
            id=r["interaction_id"],
            messages=_messages(r["messages"]),
            completion=r["completion"],
            source="confidence",
            unit_id=r["unit_id"],
            prompt_tokens=int(r["prompt_tokens"]),
            positive=bool(r["positive"]),
        )
        for r in rows
        if not r["negative"] and not r["used"]
    ]


def _corrections(
    store: DuckDBStore, settings: SelectionSettings, window: str, bounds: list[Any], counts: dict[str, int]
) -> list[Selected]:
    rows = store.query(
        f"""
        SELECT f.user_id, f.correction, f.ts, i.interaction_id, i.unit_id, i.messages,
               u.interaction_id IS NOT NULL AS used
        FROM feedback f
        JOIN interactions i ON i.interaction_id = f.interaction_id AND i.role = 'served'
        LEFT JOIN training_uses u ON u.interaction_id = i.interaction_id
        WHERE f.correction IS NOT NULL AND trim(f.correction) <> '' AND {window.format(t="f")}
        ORDER BY f.ts, f.feedback_id
        """,  # noqa: S608 - fixed fragments; values are bound
        bounds,
    )
    counts["corrections_in_window"] = len(rows)
    fresh = [r for r in rows if not r["used"]]
    counts["corrections_already_used"] = len(rows) - len(fresh)
    per_user: dict[str, int] = {}
    capped = []
    for r in fresh:  # each user's earliest corrections, up to the cap
        user = r["user_id"] or f"anonymous:{r['unit_id']}"
        per_user[user] = per_user.get(user, 0) + 1
        if per_user[user] <= settings.per_user_cap:
            capped.append(r | {"user": user})
    counts["corrections_over_user_cap"] = len(fresh) - len(capped)

    trusted = set(settings.trusted_users)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in capped:
        groups.setdefault((_canonical_prompt(r["messages"]), _normalise(r["correction"])), []).append(r)
    accepted: list[Selected] = []
    seen: set[str] = set()
    unsupported = 0
    for group in groups.values():
        users = {r["user"] for r in group}
        if not (users & trusted) and len(users) < settings.agreement:
            unsupported += len(group)
            continue
        first = next((r for r in group if r["user"] in trusted), group[0])  # a trusted author's wording
        if first["interaction_id"] in seen:
            continue
        seen.add(first["interaction_id"])
        accepted.append(
            Selected(
                id=first["interaction_id"],
                messages=_messages(first["messages"]),
                completion=first["correction"].strip(),
                source="correction",
                unit_id=first["unit_id"],
            )
        )
    counts["corrections_unsupported"] = unsupported
    counts["corrections_accepted"] = len(accepted)
    return accepted


def _stratified(
    candidates: list[Selected], served: list[dict[str, Any]], edges: list[int], room: int, seed: int
) -> tuple[list[Selected], list[dict[str, Any]]]:
    traffic = [0] * (len(edges) + 1)
    for r in served:
        traffic[_band(int(r["prompt_tokens"]), edges)] += 1
    total = sum(traffic)
    bands: list[list[Selected]] = [[] for _ in traffic]
    for c in candidates:
        bands[_band(c.prompt_tokens, edges)].append(c)
    chosen: list[Selected] = []
    report = []
    for k, band in enumerate(bands):
        quota = math.floor(room * traffic[k] / total) if total and room > 0 else 0
        band.sort(key=lambda c: (not c.positive, _seeded(c.id, seed)))
        taken = [replace(c, stratum=k) for c in band[:quota]]
        chosen.extend(taken)
        low = edges[k - 1] if k > 0 else None
        high = edges[k] if k < len(edges) else None
        share = traffic[k] / total if total else 0.0
        report.append(
            {"band": k, "prompt_tokens_from": low, "prompt_tokens_below": high, "live_share": share}
            | {"quota": quota, "candidates": len(band), "taken": len(taken)}
        )
    return chosen, report


def _quantile_edges(values: list[int], strata: int) -> list[int]:
    """Band edges that cut ``values`` into ``strata`` bands of (about) equal count; duplicates merged."""
    if not values or strata <= 1:
        return []
    ordered = sorted(values)
    edges = [ordered[min(len(ordered) - 1, (len(ordered) * k) // strata)] for k in range(1, strata)]
    return sorted(set(edges))


def _band(value: int, edges: list[int]) -> int:
    return sum(1 for edge in edges if value >= edge)


def _seeded(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def _messages(raw: Any) -> list[dict[str, str]]:
    messages = json.loads(raw) if isinstance(raw, str) else raw
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def _canonical_prompt(raw: Any) -> str:
    return json.dumps([[m["role"], _normalise(m["content"])] for m in _messages(raw)])


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _replay(datasets: Sequence[Path], count: int, seed: int) -> list[Selected]:
    if count <= 0 or not datasets:
        return []
    pool: dict[str, dict[str, Any]] = {}
    for path in datasets:
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if record.get("source") != "replay":  # replay originals, not copies of copies
                    pool.setdefault(str(record["id"]), record)
    keys = sorted(pool, key=lambda k: _seeded(k, seed))[:count]
    return [
        Selected(id=k, messages=_messages(pool[k]["messages"]), completion=str(pool[k]["completion"]), source="replay")
        for k in keys
    ]
