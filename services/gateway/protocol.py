"""Request and response bodies of the gateway's HTTP API, in the OpenAI shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from feedback.events import ChatMessage


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a final chunk with the token counts."""

    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False  # strict: "yes" or 1 is a 400, not True


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``; fields the service does not use are ignored, as OpenAI does."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(None, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and (len(value) > 4 or any(not s for s in value)):
            raise ValueError("stop takes at most 4 non-empty strings")
        if value == "":
            raise ValueError("stop must not be empty")
        return value

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage

    def stop_strings(self) -> tuple[str, ...]:
        """``stop`` as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def token_budget(self) -> int | None:
        """The requested completion budget: ``max_completion_tokens`` wins over ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class AssistantMessage(BaseModel):
    """The answer's message."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """One answer; the service always returns exactly one."""

    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "content_filter"]
    logprobs: None = None


class Usage(BaseModel):
    """Token counts of the served answer."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    """The OpenAI chat completion object, plus the signed interaction id for feedback."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    interaction_id: str


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "flywheel"


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: at least one of thumb, rating, comment, correction."""

    model_config = ConfigDict(extra="forbid")

    interaction_id: str = Field(min_length=1, max_length=128)  # the signed id from the answer
    feedback_id: str = Field(min_length=1, max_length=128)  # client-chosen, makes retries idempotent
    thumb: Literal["up", "down"] | None = None
    rating: int | None = Field(None, ge=1, le=5)
    comment: str | None = Field(None, max_length=10_000)
    correction: str | None = Field(None, max_length=100_000)
    user: str | None = Field(None, max_length=256)


class FeedbackAccepted(BaseModel):
    """The feedback is durably logged and on its way to the store."""

    status: Literal["accepted"] = "accepted"
    feedback_id: str


class Health(BaseModel):
    """``GET /healthz``: serving works even when Kafka does not (events wait in the local log)."""

    status: Literal["ok", "degraded"]
    model: str
    kafka_connected: bool
    pending_events: int
    wal_bytes: int
    wal_max_bytes: int
    kafka_error: str | None
    auth: Literal["keys", "off"]  # "off": no route checks API keys (security.auth, development only)


class ChunkChoice(BaseModel):
    """The one choice of a stream chunk."""

    index: int = 0
    delta: dict[str, str]  # {"role": "assistant", "content": ""}, then {"content": piece}, then {}
    finish_reason: Literal["stop", "length", "content_filter"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed answer (``stream: true``), in OpenAI's chunk shape.

    With ``stream_options.include_usage`` every chunk carries ``usage: null`` and a last chunk
    with no choices carries the usage; without it the field is left out.
    """

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    interaction_id: str


class Readiness(BaseModel):
    """``GET /readyz``: ready once the champion can be served and the deployment state was read."""

    ready: bool
    champion: str
    challenger: str | None
    phase: str
    deployment_id: str
    bases_loading: list[str]  # base models of other deployed versions being loaded now
    bases_loaded: list[str]  # base models loaded on demand (besides the configured ones)


class SetChallenger(BaseModel):
    """``POST /v1/admin/deployments/challenger``: a new challenger, in shadow or at the first A/B step."""

    model_config = ConfigDict(extra="forbid")

    model_version: str = Field(min_length=1, max_length=256)  # base name, or base+adapter version
    mode: Literal["shadow", "ab"] = "shadow"
    shadow_sample_rate: float = Field(1.0, ge=0, le=1)


class SetMode(BaseModel):
    """``POST /v1/admin/deployments/mode``: shadow, or an A/B ramp step (an index into the ramp)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["shadow", "ab"]
    step: int = Field(0, ge=0)
    shadow_sample_rate: float | None = Field(None, ge=0, le=1)


class DeploymentView(BaseModel):
    """The deployment this gateway applies."""

    deployment_id: str
    revision: int
    champion: str
    challenger: str | None
    mode: Literal["shadow", "ab"]
    phase: str
    ramp: list[int]
    ramp_step: int
    challenger_percent: float
    shadow_sample_rate: float
    updated_by: str
