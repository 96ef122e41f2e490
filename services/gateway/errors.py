"""HTTP errors of the gateway, in OpenAI's error shape.

    ApiError                   any error the gateway answers on purpose
    ├── 400 invalid_request    a request body or parameter is invalid (names the field)
    ├── 400 content_filter     the content filter refused the prompt (code "content_filter")
    ├── 401 unauthenticated    no API key, a malformed, unknown or revoked one (WWW-Authenticate: Bearer)
    ├── 403 invalid_signature  feedback for an interaction id the gateway did not sign
    ├── 403 forbidden          a valid key whose role lacks the route's permission (or a forced arm's)
    ├── 404 model_not_found    the request names a model (or adapter version) the gateway does not serve
    ├── 409 conflict           a deployment change not allowed from the current state
    ├── 413 too_large          a request body over gateway.max_body_bytes
    ├── 429 overloaded         too many requests wait; the answer carries Retry-After
    ├── 429 key_limited        a key over its rate or its requests in flight (code "rate_limit_exceeded")
    └── 503 unavailable        the event log is full, Kafka is unreachable, or the model backend failed

Every body reads ``{"error": {"message", "type", "param", "code"}}`` (``code`` is null except
where named above); messages are fixed strings
that tests assert. A stream that fails after its first chunk cannot change its status any more:
it ends with the same error object as its last event (:data:`STREAM_FAILED`), then ``[DONE]``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from feedback.settings import KeyLimitSettings
from services.gateway.limits import Limited

INVALID_SIGNATURE = "interaction_id was not issued by this service (signature does not verify)"
EVENT_LOG_FULL = "the service cannot record events right now (event log full); retry later"
BACKEND_FAILED = "the model backend failed to answer; retry later"
STREAM_FAILED = "the model backend failed while streaming; the answer is incomplete"
OVERLOADED = "the gateway is at capacity; retry after the Retry-After interval"


class ApiError(Exception):
    """An error answered with ``status`` and an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str,
        param: str | None = None,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.code = code  # OpenAI's machine-readable error code, e.g. "content_filter"
        self.detail = detail  # what went wrong inside, for the event log; never shown to the client
        self.headers = headers


def overloaded(retry_after_s: int) -> ApiError:
    """A 429 with Retry-After."""
    return ApiError(429, OVERLOADED, kind="rate_limit_error", headers={"Retry-After": str(retry_after_s)})


def key_limited(why: Limited, limits: KeyLimitSettings) -> ApiError:
    """A 429 for a key over its rate or its requests in flight, with Retry-After."""
    if why.reason == "concurrency":
        message = f"this API key already has {limits.max_in_flight} requests in flight; retry when one ended"
    else:
        message = (
            f"this API key is over its rate of {limits.rate_per_s:g} requests a second "
            f"(bursts of {limits.burst}); retry after {why.retry_after_s} s"
        )
    return ApiError(
        429,
        message,
        kind="rate_limit_error",
        headers={"Retry-After": str(why.retry_after_s)},
        code="rate_limit_exceeded",
    )


def too_large(limit: int) -> ApiError:
    """A 413 naming the limit."""
    return ApiError(413, f"the request body exceeds {limit} bytes", kind="invalid_request_error")


def invalid_request(message: str, param: str | None = None) -> ApiError:
    """A 400 naming the offending parameter."""
    return ApiError(400, message, kind="invalid_request_error", param=param)


def error_body(message: str, kind: str, param: str | None, code: str | None = None) -> dict[str, dict[str, str | None]]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    body = error_body(exc.message, exc.kind, exc.param, exc.code)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)


def install_error_handlers(app: FastAPI) -> None:
    """Answer ApiError and body validation errors in the OpenAI shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
