"""What the proxy answers itself, in the gateway's OpenAI error shape.

    ProxyError                  a request the proxy could not hand to an upstream, or not whole
    ├── 413 too_large           a request body over ``max_body_bytes`` (never sent upstream)
    ├── 502 no_upstream         every upstream refused the connection (nothing was sent to any)
    ├── 502 upstream_failed     an upstream took the request, then failed before its answer began
    └── 504 upstream_timeout    an upstream took the request and sent no answer within the read timeout

Every body reads ``{"error": {"message", "type", "param", "code"}}`` with a fixed message that
tests assert; which upstreams failed, and how, goes to the log, not to clients. An upstream that
fails after its answer began cannot change the status any more: the proxy closes the connection,
so the client sees an incomplete answer rather than a short one passed off as whole.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

TOO_LARGE = "the request body is larger than the proxy accepts"
NO_UPSTREAM = "no gateway replica accepted the connection; retry later"
UPSTREAM_FAILED = "the gateway replica failed before answering; the request may or may not have been served"
UPSTREAM_TIMEOUT = "the gateway replica did not answer in time; the request may or may not have been served"


class ProxyError(Exception):
    """A request the proxy answers itself with ``status`` and a fixed message."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code

    def response(self) -> JSONResponse:
        """The error as an OpenAI-shaped JSON answer."""
        body = {"error": {"message": self.message, "type": "server_error", "param": None, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


class UpstreamBroke(Exception):
    """An upstream failed after its answer began: the client connection is closed, not completed."""


def too_large() -> ProxyError:
    """413: the body is over the limit."""
    return ProxyError(413, TOO_LARGE, "request_too_large")


def no_upstream() -> ProxyError:
    """502: every upstream refused the connection."""
    return ProxyError(502, NO_UPSTREAM, "no_upstream")


def upstream_failed() -> ProxyError:
    """502: the upstream took the request and failed before answering."""
    return ProxyError(502, UPSTREAM_FAILED, "upstream_failed")


def upstream_timeout() -> ProxyError:
    """504: the upstream took the request and stayed silent."""
    return ProxyError(504, UPSTREAM_TIMEOUT, "upstream_timeout")
