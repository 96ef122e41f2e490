"""The proxy's configuration: its upstreams and how long and how much it waits for them."""

from __future__ import annotations

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator


class ProxyConfig(BaseModel):
    """Where the proxy sends requests, and its bounds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # base URLs of the gateway replicas, tried in turn (http://host:port, optionally with a path prefix)
    upstreams: tuple[str, ...] = Field(min_length=1)
    # an upstream that has not accepted the connection by then counts as refusing (the next one is tried), seconds
    connect_timeout_s: float = Field(2.0, gt=0)
    # longest silence of an upstream while its answer is awaited or streamed (a CPU answer may queue), seconds
    read_timeout_s: float = Field(600.0, gt=0)
    max_connections: int = Field(1000, ge=1)  # open connections to all upstreams together
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # larger request bodies get a 413 (read whole to retry)

    @field_validator("upstreams")
    @classmethod
    def _http_urls(cls, upstreams: tuple[str, ...]) -> tuple[str, ...]:
        checked = []
        for upstream in upstreams:
            try:
                url = httpx.URL(upstream)
            except httpx.InvalidURL as exc:
                raise ValueError(f"{upstream!r} is not a URL: {exc}") from exc
            if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
                raise ValueError(f"{upstream!r} must look like http://host:port (no query or fragment)")
            checked.append(upstream.rstrip("/"))
        if len(set(checked)) != len(checked):
            raise ValueError("each upstream may be named once")
        return tuple(checked)
