"""The gateway's audit trail: every request is an audit event (``feedback.audit``).

Each route's action is named here; the health probes, metrics and API docs are not recorded. The
chat route adds the interaction id and how the request was served (arm, model version that
answered, deployment and phase; never the prompt: the interaction row holds it).
"""

from __future__ import annotations

from fastapi import FastAPI

from feedback.audit import API_DOCS, AuditMiddleware, AuditNote
from feedback.errors import SignatureError
from feedback.signing import verify_id
from services.gateway.protocol import FeedbackRequest
from services.gateway.serving import Exchange

ACTIONS: dict[tuple[str, str], str] = {
    ("POST", "/v1/chat/completions"): "chat.completion",
    ("GET", "/v1/models"): "models.list",
    ("POST", "/v1/feedback"): "feedback.submit",
    ("GET", "/v1/admin/deployments"): "deployment.read",
    ("POST", "/v1/admin/deployments/challenger"): "deployment.set_challenger",
    ("POST", "/v1/admin/deployments/mode"): "deployment.set_mode",
    ("POST", "/v1/admin/deployments/promote"): "deployment.promote",
    ("POST", "/v1/admin/deployments/rollback"): "deployment.rollback",
}
EXEMPT = ("/healthz", "/readyz", "/metrics", *API_DOCS)


def install_audit(app: FastAPI) -> None:
    """Record every request to ``app`` (the outermost middleware, so refusals by the others count too)."""
    app.add_middleware(AuditMiddleware, actions=ACTIONS, exempt=EXEMPT)


def describe_exchange(note: AuditNote, exchange: Exchange) -> None:
    """Point the chat request's audit note at its interaction and say how it was served."""
    note.resource = exchange.interaction_id

    def finish(note: AuditNote) -> None:
        state = exchange.route.state
        note.details |= {
            "request_id": exchange.request_id,
            "arm": exchange.route.arm,
            "model_version": exchange.answered_by,
            "deployment_id": state.deployment_id,
            "phase": state.phase,
            "stream": exchange.request.stream,
            "fallback": exchange.fallback is not None,
        }
        if exchange.served_error is not None:  # also a stream that failed after its 200
            note.outcome, note.reason = "error", exchange.served_error
            note.details["error"] = exchange.served_error

    note.finish = finish


def describe_feedback(note: AuditNote, body: FeedbackRequest, signing_key: str) -> None:
    """Point the feedback request's audit note at its interaction (the raw id, when the signature verifies)."""
    try:
        note.resource = verify_id(body.interaction_id, signing_key)
    except SignatureError:
        note.details["claimed_interaction_id"] = body.interaction_id[:200]
    note.details["feedback_id"] = body.feedback_id
