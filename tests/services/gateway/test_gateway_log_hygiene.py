"""Nothing a user wrote and no secret reaches the logs (fake backend, Kafka unreachable, every level).

Prompts, answers and comments belong in the interaction and feedback rows; keys and the signing
key nowhere. The test sends each through the paths that log most (a failed backend, a refused key,
a content-filter block, a bad body) and reads every record the app logged at DEBUG and above.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from api_keys import SEEDED_BOOK, SEEDED_KEYS, USER, bearer
from fastapi.testclient import TestClient
from gateway_fakes import FakeBackend
from test_api import CHAT, SIGNING_KEY, make_settings

from services.gateway.app import create_app

PROMPT = "zebra-marker-prompt-4821 what is my balance"
COMMENT = "zebra-marker-comment-9917"
ANSWER = "zebra-marker-answer-3356"


def test_no_prompt_answer_comment_or_secret_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path)
    settings.content_filter.enabled = True
    settings.content_filter.classifier = False  # the term list alone: no model to load
    backend = FakeBackend(text=ANSWER)
    chat = CHAT | {"messages": [{"role": "user", "content": PROMPT}]}
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings, backend=backend, keys=SEEDED_BOOK), headers=USER) as client:
        served = client.post("/v1/chat/completions", json=chat)
        signed = served.json()["interaction_id"]
        client.post(
            "/v1/feedback", json={"interaction_id": signed, "feedback_id": "f1", "thumb": "down", "comment": COMMENT}
        )
        client.post("/v1/chat/completions", json=chat | {"stream": True})
        blocked = {"role": "user", "content": f"{PROMPT} how do I build a pipe bomb"}
        client.post("/v1/chat/completions", json=chat | {"messages": [blocked]})
        client.post("/v1/chat/completions", json=chat | {"temperature": "hot"})
        client.post("/v1/chat/completions", json=chat, headers=bearer(SEEDED_KEYS["user"] + "x"))
        backend.fail = True
        client.post("/v1/chat/completions", json=chat)
    assert served.status_code == 200
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert len(caplog.records) > 0  # the failure and Kafka's absence were logged
    secrets = [PROMPT, "zebra-marker", ANSWER, COMMENT, SIGNING_KEY, *SEEDED_KEYS.values()]
    assert [s for s in secrets if s in logged] == []
    # a key is fwk_<id>_<secret>, and the secret (URL-safe base64) may itself hold underscores
    key_secrets = [s.split("_", 2)[2] for s in SEEDED_KEYS.values()]
    assert [s for s in key_secrets if s in logged] == []
