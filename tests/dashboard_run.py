"""A short simulated run of one experiment for the dashboard's tests: a shadow phase, then an A/B step.

Events are what the gateway writes (served and shadow responses, feedback), spread over the last
two hours so the time series have several points: paired shadow responses first, then units
assigned to the arms by the gateway's own sticky hash at ``percent``, with thumbs, ratings,
comments and corrections. Some answers and comments carry an e-mail address and a phone number,
which every dashboard view must redact.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from feedback.assignment import assign
from feedback.events import AnyEvent, ChatMessage, FeedbackEvent, InteractionEvent, utc_now
from feedback.registry import AdapterRegistry

PII_EMAIL = "jane.doe@example.com"
PII_PHONE = "+44 20 7946 0958"
QUESTIONS = ("Which plan suits a team of five?", "How do I reset my password?", "What does shipping cost?")
ANSWERS = (
    "The team plan fits five people and includes shared billing.",
    "Open settings, choose security, then reset the password by e-mail.",
    "Shipping is free above 50 euros and 4 euros below.",
)


def _response(experiment: str, iid: str, unit: str, arm: str, role: str, version: str, phase: str, text: str,
              at: datetime, rng: random.Random) -> InteractionEvent:  # fmt: skip
    q = int(iid.rsplit("-", 1)[1]) % len(QUESTIONS)
    slower = 1.1 if arm == "challenger" else 1.0
    return InteractionEvent(
        interaction_id=iid, request_id=f"r-{iid}-{role}", unit_id=unit, arm=arm, role=role, model_version=version,
        deployment_id=experiment, phase=phase, messages=(ChatMessage(role="user", content=QUESTIONS[q]),),
        completion=text, prompt_tokens=12, completion_tokens=len(text.split()), latency_ms=rng.gauss(200, 30) * slower,
        finish_reason="stop", confidence=rng.uniform(0.5, 0.95), ts=at,
    )  # fmt: skip


def shadow_phase(experiment: str, champion: str, challenger: str, pairs: int, start: datetime) -> list[AnyEvent]:
    """``pairs`` served champion answers, each with a shadow challenger answer (a third of them different)."""
    rng = random.Random(1)
    events: list[AnyEvent] = []
    for n in range(pairs):
        at = start + timedelta(seconds=3600 * n / pairs)
        answer = ANSWERS[n % len(ANSWERS)]
        other = answer if n % 3 else f"Write to {PII_EMAIL} or call {PII_PHONE} and ask about item {n}."
        iid = f"{experiment[:12]}-s-{n}"
        events.append(_response(experiment, iid, f"u{n}", "champion", "served", champion, "shadow", answer, at, rng))
        events.append(_response(experiment, iid, f"u{n}", "challenger", "shadow", challenger, "shadow", other, at, rng))
    return events


def ab_phase(
    experiment: str, champion: str, challenger: str, percent: int, units: int, start: datetime
) -> list[AnyEvent]:
    """Two served answers per unit at ``percent`` (the gateway's assignment), feedback on most of them."""
    rng = random.Random(2)
    events: list[AnyEvent] = []
    for n in range(units * 2):
        unit = f"unit-{n % units}"
        arm = assign(experiment, unit, percent)
        at = start + timedelta(seconds=3600 * n / (units * 2))
        iid = f"{experiment[:12]}-a-{n}"
        version = challenger if arm == "challenger" else champion
        text = ANSWERS[n % len(ANSWERS)]
        events.append(_response(experiment, iid, unit, arm, "served", version, f"ab-{percent}", text, at, rng))
        events += _feedback(iid, arm, n, rng, at)
    return events


def _feedback(iid: str, arm: str, n: int, rng: random.Random, at: datetime) -> list[AnyEvent]:
    if n % 4 == 3:
        return []
    up = rng.random() < (0.75 if arm == "challenger" else 0.6)
    comment = f"reach me at {PII_EMAIL}" if n % 10 == 0 else ("clear answer" if up else "not what I asked")
    correction = f"The answer should mention item {n}." if n % 9 == 0 else None
    event = FeedbackEvent(
        feedback_id=f"fb-{iid}", interaction_id=iid, user_id=f"unit-{n}", thumb="up" if up else "down",
        rating=4 if up else 2, comment=comment, correction=correction, ts=at + timedelta(seconds=5),
    )  # fmt: skip
    return [event]


def simulated_run(
    experiment: str, champion: str, challenger: str, *, percent: int = 25, units: int = 300, pairs: int = 60
) -> list[AnyEvent]:
    """A shadow hour then an A/B hour of ``experiment``, ending now."""
    now = utc_now()
    shadow = shadow_phase(experiment, champion, challenger, pairs, now - timedelta(hours=2))
    return shadow + ab_phase(experiment, champion, challenger, percent, units, now - timedelta(minutes=59))


def record_refresh(registry: AdapterRegistry, key: str, version: str) -> None:
    """A finished refresh in the registry's ledger, shaped as the refresh records it (counts per stage)."""
    registry.claim_refresh(key)
    registry.finish_refresh(
        key,
        {
            "status": "deployed",
            "message": f"candidate {version[:12]} passed the gate and is the shadow challenger",
            "version": version,
            "selection": {"examples": 420, "confident": 380, "corrections": 40, "strata": [105, 105, 105, 105]},
            "curation": {
                "stages": {"input": 420, "pii_redacted": 12, "too_long": 8, "near_duplicates": 31, "output": 381}
            },
            "training": {"steps": 48, "examples": 343, "tokens": 51_200, "first_loss": 2.31, "last_loss": 1.12}
            | {"loss_curve": [2.31, 1.84, 1.52, 1.3, 1.12]},
            "gate": {"passed": True, "reasons": [], "heldout": {"n": 38, "champion_loss": 1.9, "candidate_loss": 1.2}},
            "seconds": {"select": 0.4, "curate": 2.1, "train": 310.0, "gate": 95.0},
        },
    )
