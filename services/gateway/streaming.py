"""Streaming a generation: its pieces of text arrive from the backend's thread into an asyncio queue."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, replace

from feedback.model.runtime import Generation
from services.gateway.backend import GenerationRequest, InferenceBackend


@dataclass(frozen=True)
class RunningStream:
    """A generation in progress and the pieces of text it produced so far."""

    pieces: asyncio.Queue[str]
    task: asyncio.Task[Generation]


@dataclass(frozen=True)
class StreamFailure:
    """The last item of a stream that failed after its first piece: the message the client gets."""

    message: str


@dataclass(frozen=True)
class ContentStopped:
    """The last item of a stream the content filter stopped: the category that blocked it."""

    category: str


StreamItem = str | Generation | StreamFailure | ContentStopped


def start_stream(backend: InferenceBackend, request: GenerationRequest) -> RunningStream:
    """Start generating ``request`` with each new piece of text put into a queue."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str] = asyncio.Queue()
    request = replace(request, on_text=functools.partial(_put_from_thread, loop, pieces))
    return RunningStream(pieces, loop.create_task(backend.generate(request)))


def _put_from_thread(loop: asyncio.AbstractEventLoop, pieces: asyncio.Queue[str], text: str) -> None:
    loop.call_soon_threadsafe(pieces.put_nowait, text)


async def next_piece(running: RunningStream, timeout: float | None) -> str | None:
    """The next piece of text, or None once the generation is over and every piece was taken.

    Raises the generation's error, or TimeoutError when no piece came within ``timeout`` seconds.
    """
    pieces, task = running.pieces, running.task
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        if not pieces.empty():
            return pieces.get_nowait()
        if task.done():
            await asyncio.sleep(0)  # let the last call_soon_threadsafe pieces land
            if pieces.empty():
                task.result()  # raises the generation's error, if any
                return None
            continue
        getter = asyncio.ensure_future(pieces.get())
        remaining = None if deadline is None else max(0.0, deadline - loop.time())
        done, _ = await asyncio.wait({getter, task}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if not done:
            raise TimeoutError


async def first_piece(running: RunningStream, timeout: float | None) -> str | None:
    """Like :func:`next_piece`, but the generation is cancelled when waiting fails or is cancelled.

    Before the first piece nobody else holds the task, so a client gone at that point (or a
    timeout) must not leave it generating.
    """
    try:
        return await next_piece(running, timeout)
    except BaseException:
        running.task.cancel()
        raise
