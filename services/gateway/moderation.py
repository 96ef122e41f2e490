"""The content filter at the gateway: prompts refused before inference, answers replaced, blocks audited.

- A prompt is checked message by message (a short insult must not be diluted by a long system
  prompt); a blocked prompt is answered 400 with code ``content_filter`` and never reaches a model.
- A non-streamed answer that is blocked is replaced by ``content_filter.refusal`` with
  ``finish_reason: "content_filter"``.
- A streamed answer is checked as it accumulates (:class:`feedback.content.StreamCheck`): only
  checked text goes out, never half a word, and a blocked stream stops with a last chunk whose
  ``finish_reason`` is ``"content_filter"``; the text already sent stays, the rest is withheld.
- Every block of a prompt or a served answer counts in ``flywheel_content_blocked_total`` (labels
  ``where`` = prompt|answer, ``category``) and becomes one audit event (action ``content.blocked``)
  that carries the category, the score and how many rules matched, never the text (a matched term's
  name would quote it).
- Shadow answers are checked too, so their events show what users would have got; a shadow check
  that fails is logged and the answer recorded unfiltered: the shadow path never fails a request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from feedback.content import ContentFilter, ContentVerdict, StreamCheck
from feedback.events import AuditEvent, ChatMessage
from feedback.producer import EventProducer
from feedback.settings import Settings
from services.gateway.errors import ApiError
from services.gateway.feedback_service import publish
from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

Where = Literal["prompt", "answer"]
ACTION = "content.blocked"
PROMPT_BLOCKED = "the prompt was refused by the content filter (category: {category})"


def prompt_blocked(category: str) -> ApiError:
    """The 400 a blocked prompt gets."""
    return ApiError(
        400,
        PROMPT_BLOCKED.format(category=category),
        kind="invalid_request_error",
        param="messages",
        code="content_filter",
    )


class ContentGuard:
    """Applies the configured content filter (None: off) to prompts and answers, and records blocks."""

    def __init__(
        self,
        content_filter: ContentFilter | None,
        settings: Settings,
        producer: EventProducer,
        metrics: GatewayMetrics,
    ) -> None:
        self.content_filter = content_filter
        self._settings = settings.content_filter
        self._audit_topic = settings.kafka.topics.audit
        self._producer = producer
        self._metrics = metrics

    @property
    def refusal(self) -> str:
        """The text that replaces a blocked answer."""
        return self._settings.refusal

    def check_prompt(self, messages: Sequence[ChatMessage], actor: str, request_id: str) -> None:
        """Raise the 400 when any message of the prompt is blocked (after counting and auditing it)."""
        if self.content_filter is None or not self._settings.prompts:
            return
        for message in messages:
            verdict = self.content_filter.check(message.content)
            if verdict.blocked:
                self.record_block("prompt", verdict, actor, f"request:{request_id}")
                raise prompt_blocked(verdict.category)

    def check_answer(self, text: str, actor: str, interaction_id: str) -> ContentVerdict | None:
        """The verdict on a served answer when it is blocked (counted and audited), else None."""
        if self.content_filter is None or not self._settings.answers:
            return None
        verdict = self.content_filter.check(text)
        if not verdict.blocked:
            return None
        self.record_block("answer", verdict, actor, f"interaction:{interaction_id}")
        return verdict

    def stream_check(self) -> StreamCheck | None:
        """A check for one streamed answer, or None when answers are not filtered."""
        if self.content_filter is None or not self._settings.answers:
            return None
        return StreamCheck(self.content_filter)

    def shadow_blocked(self, text: str) -> bool:
        """Whether a shadow answer would have been blocked; False when the check itself fails."""
        if self.content_filter is None or not self._settings.answers:
            return False
        try:
            return self.content_filter.check(text).blocked
        except Exception:  # the shadow path never fails: the answer is recorded unfiltered
            log.exception("content filter failed on a shadow answer")
            return False

    def record_block(self, where: Where, verdict: ContentVerdict, actor: str, resource: str) -> None:
        """Count the block and log its audit event (no text in it)."""
        self._metrics.content_blocks.labels(where=where, category=verdict.category).inc()
        event = AuditEvent(
            actor=actor,
            action=ACTION,
            resource=resource,
            outcome="denied",
            reason=f"{where} blocked by the content filter: {verdict.category}",
            details={
                "where": where,
                "category": verdict.category,
                "score": round(verdict.score, 4),
                "rules_matched": len(verdict.matched),  # how many, not which: a term's name quotes the text
            },
        )
        publish(self._producer, self._audit_topic, event, self._metrics)
