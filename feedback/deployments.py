"""Deployment state: who is champion, who is challenger, in which mode and ramp step.

The state is one record on the compacted ``deployments`` topic under the key ``"current"``; every
gateway replica reads the topic from the start and applies the latest record, so any number of
replicas agree without a shared database. Changes are pure functions from one state to the next
(:func:`set_challenger`, :func:`set_mode`, :func:`promote`, :func:`roll_back`); they raise
:class:`DeploymentError` with a message naming the problem when a change is not allowed.

Phases: ``champion-only`` (no challenger), ``shadow`` (challenger answers copies), ``ab-<percent>``
(the challenger serves ``percent`` of units, sticky by :mod:`feedback.assignment`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from feedback.errors import FlywheelError
from feedback.events import utc_now
from feedback.follower import TopicFollower, publish_record
from feedback.ids import new_id
from feedback.settings import KafkaSettings

log = logging.getLogger(__name__)

STATE_KEY = b"current"
Mode = Literal["shadow", "ab"]


class DeploymentError(FlywheelError):
    """A deployment change that is not allowed from the current state."""


class DeploymentState(BaseModel):
    """One deployment: champion and optional challenger model versions, mode and ramp step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployment_id: str = Field(min_length=1, max_length=64)  # new for each challenger; salts assignment
    champion: str = Field(min_length=1)  # model version: base name, or base+adapter hash
    challenger: str | None = None  # model version, or None when the champion serves alone
    mode: Mode = "shadow"
    ramp: tuple[int, ...] = (5, 10, 25, 50)  # challenger percentages of the A/B ladder
    ramp_step: int = Field(0, ge=0)  # index into ``ramp`` while mode is "ab"
    shadow_sample_rate: float = Field(1.0, ge=0, le=1)  # share of requests copied to a shadow challenger
    revision: int = Field(0, ge=0)  # counts changes; a replica applies only newer revisions
    updated_by: str = "system"
    updated_at: datetime = Field(default_factory=utc_now)

    @property
    def phase(self) -> str:
        """``champion-only``, ``shadow`` or ``ab-<percent>``."""
        if self.challenger is None:
            return "champion-only"
        return "shadow" if self.mode == "shadow" else f"ab-{self.challenger_percent:g}"

    @property
    def challenger_percent(self) -> float:
        """The A/B share of the challenger arm in percent (0 outside A/B mode)."""
        if self.challenger is None or self.mode != "ab":
            return 0.0
        return float(self.ramp[self.ramp_step])

    def encode(self) -> bytes:
        """The record's value on the deployments topic."""
        return self.model_dump_json().encode()


def split_version(model_version: str) -> tuple[str, str | None]:
    """``base+adapter`` → (base, adapter); a bare base name → (base, None)."""
    base, _, adapter = model_version.partition("+")
    return base, adapter or None


def join_version(base: str, adapter: str | None) -> str:
    """The model version of ``base`` with the registry's ``adapter`` version on it (None: the base alone)."""
    return base if adapter is None else f"{base}+{adapter}"


def initial_state(champion: str, ramp: Sequence[int]) -> DeploymentState:
    """The state before any record exists: the champion alone."""
    return DeploymentState(deployment_id="initial", champion=champion, ramp=tuple(ramp))


def decode_state(raw: bytes) -> DeploymentState:
    """Parse a record value, or raise DeploymentError."""
    try:
        return DeploymentState.model_validate_json(raw)
    except ValidationError as exc:
        raise DeploymentError(f"invalid deployment record: {exc.errors()[0]['msg']}") from exc


def _next(state: DeploymentState, by: str, **changes: object) -> DeploymentState:
    return state.model_copy(
        update={**changes, "revision": state.revision + 1, "updated_by": by, "updated_at": utc_now()}
    )


def set_challenger(
    state: DeploymentState, model_version: str, *, by: str, mode: Mode = "shadow", sample_rate: float = 1.0
) -> DeploymentState:
    """A new challenger (a new deployment id), entering in shadow or at the ramp's first A/B step."""
    if model_version == state.champion:
        raise DeploymentError(f"{model_version!r} is already the champion")
    if not 0 <= sample_rate <= 1:
        raise DeploymentError(f"shadow_sample_rate must be in [0, 1], got {sample_rate}")
    return _next(
        state,
        by,
        deployment_id=new_id(),
        challenger=model_version,
        mode=mode,
        ramp_step=0,
        shadow_sample_rate=sample_rate,
    )


def set_mode(
    state: DeploymentState, mode: Mode, *, by: str, step: int = 0, sample_rate: float | None = None
) -> DeploymentState:
    """Change mode or ramp step; an A/B ramp only ever moves up (it only adds units to the challenger)."""
    if state.challenger is None:
        raise DeploymentError("there is no challenger; set one first")
    if not 0 <= step < len(state.ramp):
        raise DeploymentError(f"step must be in [0, {len(state.ramp) - 1}] (ramp {list(state.ramp)}), got {step}")
    if state.mode == "ab" and (mode == "shadow" or step < state.ramp_step):
        raise DeploymentError("an A/B ramp only moves up; roll back to end it")
    rate = state.shadow_sample_rate if sample_rate is None else sample_rate
    if not 0 <= rate <= 1:
        raise DeploymentError(f"shadow_sample_rate must be in [0, 1], got {rate}")
    return _next(state, by, mode=mode, ramp_step=step, shadow_sample_rate=rate)


def promote(state: DeploymentState, *, by: str) -> DeploymentState:
    """The challenger becomes the champion; the old champion retires."""
    if state.challenger is None:
        raise DeploymentError("there is no challenger to promote")
    return _next(
        state, by, deployment_id=new_id(), champion=state.challenger, challenger=None, mode="shadow", ramp_step=0
    )


def roll_back(state: DeploymentState, *, by: str) -> DeploymentState:
    """Remove the challenger; the champion serves alone."""
    if state.challenger is None:
        raise DeploymentError("there is no challenger to roll back")
    return _next(state, by, deployment_id=new_id(), challenger=None, mode="shadow", ramp_step=0)


def publish_state(kafka: KafkaSettings, state: DeploymentState) -> None:
    """Write ``state`` to the deployments topic and wait for the broker's acknowledgement."""
    publish_record(kafka, kafka.topics.deployments, STATE_KEY, state.encode())


class DeploymentWatcher(TopicFollower):
    """Follows the deployments topic in a thread and applies each newer record through ``apply``."""

    def __init__(
        self, kafka: KafkaSettings, initial: DeploymentState, apply: Callable[[DeploymentState], None]
    ) -> None:
        super().__init__(kafka, kafka.topics.deployments)
        self._apply = apply
        self._state = initial
        self._changed = threading.Condition()

    @property
    def state(self) -> DeploymentState:
        """The latest state applied."""
        return self._state

    def describe(self) -> str:
        """The phase kept while the topic is unreachable."""
        return self._state.phase

    def wait_for(self, revision: int, timeout_s: float) -> bool:
        """Wait until the state with this revision (or a later one) is applied."""
        with self._changed:
            return self._changed.wait_for(lambda: self._state.revision >= revision, timeout=timeout_s)

    def receive(self, key: bytes | None, value: bytes | None) -> None:
        """Apply a newer deployment record; ignore older revisions and unreadable records."""
        if key != STATE_KEY or value is None:
            return
        try:
            state = decode_state(value)
        except DeploymentError as exc:
            log.error("ignoring a deployment record: %s", exc)
            return
        if state.revision <= self._state.revision:
            return
        try:
            self._apply(state)
        except Exception:  # the state still holds; what failed (an adapter load) shows in events and metrics
            log.exception("applying deployment revision %s failed", state.revision)
        with self._changed:
            self._state = state
            self._changed.notify_all()
