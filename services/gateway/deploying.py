"""Admin changes to the deployment: validate, publish to the deployments topic, wait until applied here.

The topic is the only source of truth: this gateway changes its own routing only when its
watcher reads the new record back, exactly like every other replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from feedback.deployments import DeploymentError, DeploymentState, DeploymentWatcher, publish_state
from feedback.errors import KafkaUnavailableError
from feedback.settings import Settings
from services.gateway.errors import ApiError
from services.gateway.serving import ChatService

Change = Callable[[DeploymentState], DeploymentState]


class DeploymentControl:
    """Applies admin changes through the deployments topic."""

    def __init__(self, watcher: DeploymentWatcher, chat: ChatService, settings: Settings) -> None:
        self._watcher = watcher
        self._chat = chat
        self._settings = settings

    @property
    def state(self) -> DeploymentState:
        """The state this gateway applies now."""
        return self._chat.deployment

    async def change(self, change: Change) -> DeploymentState:
        """Compute the next state from the current one, check its models load, publish, wait until applied."""
        try:
            new = change(self._watcher.state)
        except DeploymentError as exc:
            raise ApiError(409, str(exc), kind="conflict_error") from exc
        await self._check_loadable(new)
        try:
            await asyncio.to_thread(publish_state, self._settings.kafka, new)
        except KafkaUnavailableError as exc:
            current = self._chat.deployment  # a base loaded for the refused change is not kept
            await self._chat.pool.retain((current.champion, current.challenger))
            raise ApiError(503, f"the deployments topic is unreachable: {exc}", kind="server_error") from exc
        timeout = self._settings.gateway.deployment_apply_timeout_s
        if not await asyncio.to_thread(self._watcher.wait_for, new.revision, timeout):
            raise ApiError(503, f"the change was published but not applied within {timeout:g} s", kind="server_error")
        applied = self._watcher.state
        if applied.revision == new.revision and applied != new:
            # Another admin published the same revision first; replicas keep the first one.
            raise ApiError(409, "a concurrent deployment change won; read the state and retry", kind="conflict_error")
        return self._chat.deployment

    async def _check_loadable(self, state: DeploymentState) -> None:
        """Load the state's versions here first (a base model on another instance, in a thread), or refuse it."""
        for version in filter(None, (state.champion, state.challenger)):
            try:
                await self._chat.load(version)
            except Exception as exc:  # unknown base, missing or corrupt adapter: say which
                raise ApiError(
                    404,
                    f"model version {version!r} cannot be served: {exc}",
                    kind="not_found_error",
                    param="model_version",
                ) from exc
