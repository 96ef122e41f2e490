"""``/v1/feedback``."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from services.gateway.auth import FeedbackUser
from services.gateway.deps import FeedbackDep
from services.gateway.protocol import FeedbackAccepted, FeedbackRequest

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post("/feedback", status_code=status.HTTP_202_ACCEPTED)
async def submit_feedback(
    body: FeedbackRequest, request: Request, _: FeedbackUser, feedback: FeedbackDep
) -> FeedbackAccepted:
    """Record feedback on an interaction this gateway served."""
    return feedback.submit(body, request.headers)
