"""``flywheel proxy`` as a user runs it: a real process in front of an upstream, and its refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request

from services.cli.ports import free_port
from services.cli.processes import service_process

ServeApp = Callable[[Any], AbstractContextManager[str]]


def forwarded_for_upstream() -> FastAPI:
    """An upstream that answers every path with the X-Forwarded-For header it received."""
    app = FastAPI()

    @app.get("/{path:path}")
    async def echo(request: Request) -> dict[str, str | None]:
        return {"forwarded_for": request.headers.get("x-forwarded-for")}

    return app


def proxy_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", "proxy", *args],
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_proxy_command_forwards_to_its_upstreams(serve_app: ServeApp, tmp_path: Path) -> None:
    with (
        serve_app(forwarded_for_upstream()) as upstream,
        service_process("proxy", tmp_path, dict(os.environ), ["--upstream", upstream]) as proxy,
    ):
        answer = httpx.get(f"{proxy.url}/v1/models", headers={"X-Forwarded-For": "10.0.0.7"}, timeout=30)
    assert answer.json() == {"forwarded_for": "10.0.0.7, 127.0.0.1"}  # the peer's own address, not the header's


def test_the_proxy_command_names_a_bad_upstream_and_exits_2() -> None:
    result = proxy_command("--upstream", "127.0.0.1:8000")
    assert result.returncode == 2
    assert "proxy.upstreams: '127.0.0.1:8000' must look like http://host:port (no query or fragment)" in result.stderr


def test_the_proxy_command_needs_an_upstream() -> None:
    result = proxy_command("--port", str(free_port()))
    assert result.returncode == 2
    assert "Missing option '--upstream'" in result.stderr
