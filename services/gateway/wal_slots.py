"""Write-ahead log directories of a gateway of several processes: one slot per live process, none shared.

With ``gateway.processes`` N > 1 each process claims the first slot ``wal.dir/process-<i>`` (i from 0; past
N-1 only while all N are taken, as when a restarted process starts before its dead predecessor is gone)
whose ``lock`` file it can ``flock`` exclusively without waiting, and holds that lock until it exits. The
kernel drops the lock of a process that dies, however it dies, so the process that replaces it claims the
same slot and replays what the dead one left there. A single process (N = 1) holds ``wal.dir`` itself.

A log that no live process of this gateway writes is a *leftover*: ``wal.dir``'s own segments after a
single process was replaced by several, slots at or past N after N was lowered, slots under a single
process. Each process locks the leftovers it finds (one owner each) and replays them into Kafka beside its
own log, then lets them go. While one drains, the process-wide ``flywheel_wal_*`` gauges alternate between
its log and the process's own.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from feedback.errors import WalError
from feedback.producer import EventProducer, open_producer
from feedback.settings import Settings

log = logging.getLogger(__name__)

LOCK_FILE = "lock"  # in a log directory: flock'ed by its owner for the owner's lifetime, holds the owner's pid
SLOT_PREFIX = "process-"


@dataclass(frozen=True)
class HeldLog:
    """A log directory whose lock this process holds (until :meth:`release` or its exit)."""

    directory: Path
    fd: int

    def release(self) -> None:
        """Let the directory go (closing the descriptor drops the lock)."""
        os.close(self.fd)


def hold(directory: Path) -> HeldLog | None:
    """Lock ``directory`` (made if missing) for this process and write its pid; None if another holds it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise WalError(f"write-ahead log at {directory} could not be locked: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return HeldLog(directory, fd)


def slot_dir(wal_dir: Path, index: int) -> Path:
    """The log directory of slot ``index``."""
    return wal_dir / f"{SLOT_PREFIX}{index}"


def claim_slot(wal_dir: Path, processes: int) -> tuple[int, HeldLog]:
    """The first slot no live process holds, locked for this one: (its index, the held log)."""
    index = 0
    while (held := hold(slot_dir(wal_dir, index))) is None:
        index += 1
    if index >= processes:
        log.warning("all %d write-ahead log slots are taken; this process uses %s", processes, held.directory)
    return index, held


def leftovers(wal_dir: Path, processes: int) -> list[Path]:
    """Log directories holding segments that no live process of a gateway of ``processes`` processes writes."""
    candidates = [wal_dir] if processes > 1 else []
    slots = sorted(wal_dir.glob(f"{SLOT_PREFIX}*"), key=_index) if wal_dir.is_dir() else []
    first = processes if processes > 1 else 0  # a single process writes wal.dir itself, no slot
    candidates += [path for path in slots if _index(path) >= first]
    return [path for path in candidates if any(path.glob("*.wal"))]


def _index(path: Path) -> int:
    suffix = path.name.removeprefix(SLOT_PREFIX)
    return int(suffix) if suffix.isdigit() else -1  # a stray name is no slot of ours: never drained


class LeftoverLogs:
    """Replays leftover logs into Kafka, each with a producer of its own, and lets each go once Kafka has it all."""

    def __init__(self, settings: Settings, directories: list[Path]) -> None:
        self._settings = settings
        self._directories = directories
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Lock each leftover no other process drains, and replay it in a thread of its own."""
        for directory in self._directories:
            held = hold(directory)
            if held is None:
                continue  # another process drains it (or, for wal.dir, a single-process gateway writes it)
            producer = open_producer(self._settings, directory)
            pending = producer.health().pending_events
            if not pending:
                producer.close(timeout_s=0)
                held.release()
                continue
            log.warning("replaying %d events left in the write-ahead log %s", pending, directory)
            producer.start()
            thread = threading.Thread(target=self._drain, args=(producer, held), name="wal-leftover", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _drain(self, producer: EventProducer, held: HeldLog) -> None:
        while not self._stop.is_set() and not producer.flush(timeout_s=1.0):
            pass
        producer.close(timeout_s=self._settings.gateway.drain_timeout_s)
        if not producer.health().pending_events:
            log.info("write-ahead log %s replayed", held.directory)
        held.release()

    def close(self) -> None:
        """Stop replaying (what Kafka has not taken stays in its log for the next start)."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
