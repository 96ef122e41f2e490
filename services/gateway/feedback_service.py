"""Taking feedback for interactions this service signed, and logging events durably.

Feedback is accepted only for interaction ids whose HMAC signature verifies, so a forged id is
refused without a lookup; it is idempotent by the client's ``feedback_id`` (the sink dedups).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from feedback.errors import SignatureError, WalFullError
from feedback.events import AuditEvent, FeedbackEvent, InteractionEvent
from feedback.producer import EventProducer
from feedback.settings import Settings
from feedback.signing import verify_id
from services.gateway.errors import EVENT_LOG_FULL, INVALID_SIGNATURE, ApiError, invalid_request
from services.gateway.metrics import GatewayMetrics
from services.gateway.protocol import FeedbackAccepted, FeedbackRequest

log = logging.getLogger(__name__)


def publish(
    producer: EventProducer,
    topic: str,
    event: InteractionEvent | FeedbackEvent | AuditEvent,
    metrics: GatewayMetrics | None = None,
) -> None:
    """Log an event durably, or answer 503 when the log is full."""
    try:
        producer.publish(topic, event)
    except WalFullError as exc:
        log.error("event log full: %s", exc)
        if metrics is not None:
            metrics.publish_failures.inc()
        raise ApiError(503, EVENT_LOG_FULL, kind="server_error") from exc


class FeedbackService:
    """Accepts feedback for interactions this service signed."""

    def __init__(self, producer: EventProducer, settings: Settings, metrics: GatewayMetrics | None = None) -> None:
        self._producer = producer
        self._settings = settings
        self._metrics = metrics

    def submit(self, request: FeedbackRequest, headers: Mapping[str, str]) -> FeedbackAccepted:
        """Verify the interaction id's signature and log the feedback event."""
        try:
            raw_id = verify_id(request.interaction_id, self._settings.security.signing_key)
        except SignatureError as exc:
            raise ApiError(403, INVALID_SIGNATURE, kind="permission_error", param="interaction_id") from exc
        try:
            event = FeedbackEvent(
                feedback_id=request.feedback_id,
                interaction_id=raw_id,
                user_id=request.user or headers.get("x-user-id"),
                thumb=request.thumb,
                rating=request.rating,
                comment=request.comment,
                correction=request.correction,
            )
        except ValueError as exc:
            raise invalid_request("feedback needs a thumb, a rating, a comment or a correction") from exc
        publish(self._producer, self._settings.kafka.topics.feedback, event, self._metrics)
        return FeedbackAccepted(feedback_id=request.feedback_id)
