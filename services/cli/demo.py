"""The main job, end to end on real parts: Kafka, the default model, DuckDB.

Starts the local broker (unless one already answers), a worker and a gateway as separate
processes, sends real chat requests and feedback over HTTP, waits until every interaction and
every feedback is in DuckDB, prints them, and stops what it started. Exit code 0 only when
everything sent has landed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from feedback.settings import Settings
from feedback.topics import ensure_topics
from services.cli import broker
from services.cli.ports import free_port

PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Give me two tips for writing clear emails.",
    "Explain what a hash function is, briefly.",
    "Name three primary colors.",
    "Write a haiku about autumn.",
    "How many days are in a leap year?",
)
FEEDBACK: tuple[dict[str, Any], ...] = (
    {"thumb": "up"},
    {"rating": 4, "comment": "helpful"},
    {"thumb": "down", "correction": "A hash function maps data of any size to a fixed-size value."},
    {"thumb": "up", "rating": 5},
    {"rating": 3},
    {"thumb": "up"},
)
READY_TIMEOUT_S = 900.0  # the first run converts the model (tens of seconds on 2 cores)
LAND_TIMEOUT_S = 120.0


def run_demo(settings: Settings, *, short: bool) -> int:
    """Run the main job; 0 when every request and feedback landed in DuckDB."""
    workdir = Path(".flywheel/demo").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    count, max_tokens = (2, 24) if short else (len(PROMPTS), 64)
    with ExitStack() as stack:
        stack.enter_context(_local_kafka(settings))
        ensure_topics(settings.kafka)
        env = os.environ | {
            "FLYWHEEL_DUCKDB__PATH": str(workdir / "flywheel.duckdb"),
            "FLYWHEEL_GATEWAY__WAL__DIR": str(workdir / "wal"),
            "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        }
        worker_url = stack.enter_context(_service("worker", workdir, env))
        gateway_url = stack.enter_context(_service("gateway", workdir, env))
        sent = _send_traffic(gateway_url, settings.gateway.served_model_name, count, max_tokens)
        rows = _wait_until_landed(worker_url, sent)
        _print_rows(rows)
        _print_summary(worker_url)
        landed = {r["interaction_id"] for r in rows if r["feedback_id"]}
        missing = set(sent) - landed
        if missing:
            print(f"demo: {len(missing)} of {len(sent)} interactions or their feedback did not land", file=sys.stderr)
            return 1
        print(f"demo: all {len(sent)} interactions and their feedback landed in {workdir / 'flywheel.duckdb'}")
        return 0


@contextmanager
def _local_kafka(settings: Settings) -> Iterator[None]:
    local = settings.kafka.local
    if broker.is_running(local):
        print(f"demo: using the running local broker on port {local.port}")
        yield
        return
    if broker.run_script("start", local).returncode != 0:
        raise SystemExit("demo: the local Kafka broker did not start")
    try:
        yield
    finally:
        broker.run_script("stop", local)


@contextmanager
def _service(name: str, workdir: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    log_path = workdir / f"{name}.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", name, "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(name, url, proc, log_path)
            print(f"demo: {name} ready at {url} (log {log_path})")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(name: str, url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text()[-3000:]
            raise SystemExit(f"demo: {name} exited with code {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"demo: {name} was not ready after {READY_TIMEOUT_S:.0f} s (log {log_path})")


def _send_traffic(gateway_url: str, model: str, count: int, max_tokens: int) -> dict[str, str]:
    """Send ``count`` chat requests and one feedback each; return raw id -> feedback id."""
    sent: dict[str, str] = {}
    with httpx.Client(base_url=gateway_url, timeout=300) as client:
        for i in range(count):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": PROMPTS[i]}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "user": f"demo-user-{i % 3}",
            }
            answer = client.post("/v1/chat/completions", json=body)
            answer.raise_for_status()
            data = answer.json()
            text = data["choices"][0]["message"]["content"].strip().replace("\n", " ")
            print(f"demo: [{i + 1}/{count}] {PROMPTS[i]!r} -> {text[:80]!r}")
            feedback_id = f"demo-feedback-{data['interaction_id'][:32]}"
            reply = client.post(
                "/v1/feedback",
                json={"interaction_id": data["interaction_id"], "feedback_id": feedback_id} | FEEDBACK[i],
            )
            reply.raise_for_status()
            sent[data["interaction_id"].split(".")[0]] = feedback_id
    return sent


def _wait_until_landed(worker_url: str, sent: dict[str, str]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + LAND_TIMEOUT_S
    params: dict[str, list[str] | int] = {"interaction_id": list(sent), "limit": 1000}
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = httpx.get(f"{worker_url}/v1/interactions", params=params, timeout=10).json()
        if {r["interaction_id"] for r in rows if r["feedback_id"]} >= set(sent):
            break
        time.sleep(0.5)
    return rows


def _print_rows(rows: list[dict[str, Any]]) -> None:
    print("\nWhat landed in DuckDB (interactions joined with feedback):")
    header = f"{'interaction':12} {'user':12} {'tokens':>6} {'conf':>6} {'ms':>7} {'thumb':5} {'rating':>6}  answer"
    print(header)
    print("-" * len(header))
    for r in sorted(rows, key=lambda r: r["ts"]):
        print(
            f"{r['interaction_id'][:12]:12} {r['unit_id'][:12]:12} {r['completion_tokens']:>6} "
            f"{r['confidence'] or 0:>6.3f} {r['latency_ms']:>7.0f} {r['thumb'] or '':5} "
            f"{r['rating'] or '':>6}  {r['completion'].strip().replace(chr(10), ' ')[:50]}"
        )


def _print_summary(worker_url: str) -> None:
    print("\nPer-arm summary of the whole store:")
    for row in httpx.get(f"{worker_url}/v1/summary", timeout=10).json():
        print(
            f"  {row['arm']}/{row['role']} {row['model_version']} [{row['phase']}]: "
            f"{row['responses']} responses from {row['units']} users, "
            f"mean confidence {row['mean_confidence'] or 0:.3f}, thumbs {row['thumbs_up']} up / "
            f"{row['thumbs_down']} down, mean rating {row['mean_rating'] or 0:.2f}"
        )
