"""The load benchmark's client: chat requests sent open-loop or closed-loop, and what came back.

Every answer becomes an :class:`Outcome`. A 200 counts as served only when its answer is whole (a
stream ends with ``[DONE]`` and no error event) and its ids agree (the ``X-Interaction-Id`` header's
raw id is the body's ``chatcmpl-<id>``); anything else that is not a 429 with ``Retry-After`` is a
failure: a 5xx, another 4xx, no answer at all (a timeout, a reset), a broken stream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

from services.cli.credentials import bearer

MAX_TOKENS = 16  # short answers, so that a few requests a second are within reach of 2 cores
STREAM_EVERY = 4  # one request in four is streamed (server-sent events)
TIMEOUT_S = 120.0  # a request still unanswered after this counts as a failure (no answer)
INTERACTION_HEADER = "X-Interaction-Id"  # the gateway's signed id: "<raw id>.<signature>"
QUESTIONS = [
    "Why do people need sleep?",
    "How do I keep a houseplant alive?",
    "What is a good way to start running?",
    "Why is the sky blue?",
    "How can I learn a new language faster?",
    "What should I pack for a weekend hike?",
    "How do I make a simple tomato sauce?",
    "Why do leaves change colour in autumn?",
]
_numbers = itertools.count()  # every request of the run has its own number, hence its own user


@dataclass(frozen=True)
class Outcome:
    """One request as the client saw it."""

    status: int | None  # None: no answer (timeout, connection reset)
    seconds: float  # from sending to the last byte of the answer
    served_id: str | None = None  # the raw interaction id of a whole answer
    refusal: str | None = None  # a 429's cause: "overloaded", "key rate" or "key in flight"
    failure: str | None = None  # why this request counts against the service

    @property
    def kind(self) -> str:
        """Its column in the tables."""
        if self.status is None:
            return "no answer"
        if self.status == 200:
            return "200" if self.failure is None else "broken 200"
        if self.status == 429:
            return f"429 {self.refusal or 'unreadable'}"
        return "5xx" if self.status >= 500 else "other 4xx"


def payload(n: int, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """Request ``n``: a short question, greedy, ``max_tokens`` tokens, a user of its own; some streamed."""
    return {
        "model": "flywheel",
        "messages": [{"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "user": f"load-{n}",
        "stream": n % STREAM_EVERY == 0,
    }


def new_client() -> httpx.AsyncClient:
    """One connection pool for a whole phase; open loops may hold hundreds of requests at once."""
    return httpx.AsyncClient(timeout=TIMEOUT_S, limits=httpx.Limits(max_connections=2000))


async def send(client: httpx.AsyncClient, url: str, key: str, max_tokens: int = MAX_TOKENS) -> Outcome:
    """Send the next request with ``key`` (answers of ``max_tokens`` tokens) and read its whole answer."""
    body = payload(next(_numbers), max_tokens)
    start = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=bearer(key)) as response:
            content = await response.aread()
    except httpx.HTTPError as exc:
        return Outcome(None, time.perf_counter() - start, failure=f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - start
    if response.status_code == 200:
        raw_id = response.headers.get(INTERACTION_HEADER, "").partition(".")[0]
        broken = answer_problem(content, body["stream"], f"chatcmpl-{raw_id}")
        return Outcome(200, seconds, served_id=None if broken else raw_id, failure=broken)
    if response.status_code == 429:
        cause = refusal_cause(content)
        problem = None if response.headers.get("retry-after") else "429 without Retry-After"
        return Outcome(429, seconds, refusal=cause, failure=problem if cause else "429 with an unreadable body")
    return Outcome(response.status_code, seconds, failure=content[:300].decode(errors="replace"))


def answer_problem(content: bytes, stream: bool, expected_id: str) -> str | None:
    """What is wrong with a 200's body, or None: a stream must end with [DONE] without an error event."""
    try:
        if not stream:
            ids = {json.loads(content)["id"]}
        else:
            events = [line[6:] for line in content.decode().splitlines() if line.startswith("data: ")]
            if not events or events[-1] != "[DONE]":
                return "a stream that did not end with [DONE]"
            chunks = [json.loads(event) for event in events[:-1]]
            if any("error" in chunk for chunk in chunks):
                return "a stream with an error event"
            ids = {chunk["id"] for chunk in chunks}
    except (ValueError, KeyError, TypeError) as exc:
        return f"an unreadable answer ({type(exc).__name__}: {exc})"
    return None if ids == {expected_id} else f"ids {sorted(ids)} differ from the header's {expected_id}"


def refusal_cause(content: bytes) -> str | None:
    """Which limit a 429 came from, by its OpenAI error body (None: not such a body)."""
    try:
        error = json.loads(content)["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        return None
    if code != "rate_limit_exceeded":
        return "overloaded"  # the gateway's bound on requests waiting for the model
    return "key in flight" if "in flight" in message else "key rate"


async def open_loop(name: str, url: str, keys: list[str], rate: float, seconds: float) -> Phase:
    """Arrivals every 1/``rate`` s for ``seconds`` (keys in turn), never waiting for answers, until all answered.

    Arrival times are fixed from the start, so a late wake-up sends at once and the mean rate holds.
    """
    async with new_client() as client:
        tasks = []
        start = time.perf_counter()
        for i in range(round(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(send(client, url, keys[i % len(keys)])))
        outcomes = list(await asyncio.gather(*tasks))
    return Phase(name, rate, time.perf_counter() - start, outcomes)


async def closed_loop(url: str, key: str, clients: int, seconds: float, max_tokens: int = MAX_TOKENS) -> Phase:
    """``clients`` clients, each sending its next request once its answer came, for ``seconds``."""
    deadline = time.perf_counter() + seconds

    async def client_loop(client: httpx.AsyncClient) -> list[Outcome]:
        outcomes = []
        while time.perf_counter() < deadline:
            outcomes.append(await send(client, url, key, max_tokens))
        return outcomes

    start = time.perf_counter()
    async with new_client() as client:
        runs = await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    outcomes = [outcome for run in runs for outcome in run]
    return Phase(f"closed loop, {clients} clients", 0.0, time.perf_counter() - start, outcomes)


@dataclass(frozen=True)
class Phase:
    """One stretch of traffic and its outcomes, in the order the requests were sent."""

    name: str
    rate: float  # offered, requests/s (0: closed loop)
    seconds: float  # from the first request to the last answer
    outcomes: list[Outcome]

    @property
    def served(self) -> list[Outcome]:
        """The whole 200s."""
        return [o for o in self.outcomes if o.served_id is not None]

    @property
    def failures(self) -> list[Outcome]:
        """What counts against the service: anything but whole 200s and 429s with Retry-After."""
        return [o for o in self.outcomes if o.failure is not None]

    def counts(self) -> Counter[str]:
        """Outcomes by kind."""
        return Counter(o.kind for o in self.outcomes)

    def served_per_s(self) -> float:
        """Served answers per second, from the first request to the last answer (queued answers included)."""
        return len(self.served) / self.seconds

    def latency(self, part: slice = slice(None)) -> tuple[float, float]:
        """p50 and p99 of the served answers' latency, seconds (NaN without two), of ``part`` of the requests."""
        values = [o.seconds for o in self.outcomes[part] if o.served_id is not None]
        if len(values) < 2:
            return float("nan"), float("nan")
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cuts[49], cuts[98]
