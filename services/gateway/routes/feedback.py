"""``/v1/feedback``."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from feedback.audit import note_of
from services.gateway.audit import describe_feedback
from services.gateway.auth import FeedbackUser
from services.gateway.deps import FeedbackDep, SettingsDep, admit
from services.gateway.protocol import FeedbackAccepted, FeedbackRequest

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post("/feedback", status_code=status.HTTP_202_ACCEPTED)
async def submit_feedback(
    body: FeedbackRequest, request: Request, who: FeedbackUser, feedback: FeedbackDep, settings: SettingsDep
) -> FeedbackAccepted:
    """Record feedback on an interaction this gateway served."""
    admit(request, who, hold=False)  # counts against the key's rate only: it holds nothing once answered
    describe_feedback(note_of(request), body, settings.security.signing_key)
    return feedback.submit(body, request.headers)
