"""Client traffic for the cluster fault test: threads sending chat requests and feedback, each outcome kept."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass
from typing import Literal

import httpx
from api_keys import bearer

TIMEOUT_S = 120.0
CHAT = {
    "model": "flywheel",
    "messages": [{"role": "user", "content": "Name a colour."}],
    "max_tokens": 3,
    "temperature": 0,
}
LONG_TOKENS = 32  # the answers in flight when the gateway is killed: long enough to be caught generating


@dataclass(frozen=True)
class Outcome:
    """One request as its client saw it."""

    kind: Literal["chat", "feedback"]
    ident: str  # the chat's user (each request its own) or the feedback id
    started: float  # time.monotonic()
    ended: float
    failure: str | None  # the error code or exception of a failed request


class Traffic:
    """Client threads sending chat requests and feedback through the proxy until stopped."""

    def __init__(self, url: str, key: str, clients: int) -> None:
        self._url, self._key = url, key
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self.outcomes: list[Outcome] = []  # appended by every client (list.append is atomic)
        self.long_answers = threading.Event()  # set: chats ask for LONG_TOKENS, so they stay in flight longer
        self._lock = threading.Lock()
        self._chats = 0  # chat requests in flight
        self._threads = [threading.Thread(target=self._client, name=f"client-{n}") for n in range(clients)]
        for thread in self._threads:
            thread.start()

    @property
    def chats_in_flight(self) -> int:
        with self._lock:
            return self._chats

    def stop(self) -> None:
        """Let each client finish its request and stop."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=TIMEOUT_S)

    def _client(self) -> None:
        with httpx.Client(base_url=self._url, headers=bearer(self._key), timeout=TIMEOUT_S) as client:
            while not self._stop.is_set():
                n = next(self._numbers)
                interaction = self._chat(client, f"user-{n:06d}", stream=n % 4 == 1)
                if interaction is not None and n % 2 == 0:
                    self._feedback(client, interaction, f"feedback-{n:06d}")

    def _chat(self, client: httpx.Client, user: str, stream: bool) -> str | None:
        """One chat request; the signed interaction id of its answer, None when it failed."""
        started, failure, interaction = time.monotonic(), None, None
        body = (
            CHAT
            | {"user": user, "stream": stream}
            | ({"max_tokens": LONG_TOKENS} if self.long_answers.is_set() else {})
        )
        with self._lock:
            self._chats += 1
        try:
            with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                text = answer.read()
            interaction = answer.headers.get("x-interaction-id")
            if answer.status_code != 200:
                failure = error_code(text)
            elif stream and not text.rstrip().endswith(b"data: [DONE]"):
                failure = "stream without its end"
        except httpx.HTTPError as exc:
            failure = type(exc).__name__
        finally:
            with self._lock:
                self._chats -= 1
        self.outcomes.append(Outcome("chat", user, started, time.monotonic(), failure))
        return interaction if failure is None else None

    def _feedback(self, client: httpx.Client, interaction: str, feedback_id: str) -> None:
        started, failure = time.monotonic(), None
        try:
            body = {"interaction_id": interaction, "feedback_id": feedback_id, "thumb": "up"}
            answer = client.post("/v1/feedback", json=body)
            if answer.status_code != 202:
                failure = error_code(answer.content)
        except httpx.HTTPError as exc:
            failure = type(exc).__name__
        self.outcomes.append(Outcome("feedback", feedback_id, started, time.monotonic(), failure))


def error_code(body: bytes) -> str:
    """The code of an OpenAI-shaped error body (else the body's start)."""
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return body[:120].decode(errors="replace")


class Clock:
    """Seconds spent in each phase, in order."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._mark = time.monotonic()

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.spent[phase], self._mark = now - self._mark, now
