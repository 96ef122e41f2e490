"""A local write-ahead log for events on their way to Kafka.

Each record is appended to the current segment file before the request that made it returns, and
is forgotten once Kafka acknowledges it. Records get consecutive sequence numbers; acknowledgements
may arrive out of order (several partitions), so the log tracks the *low watermark*, the smallest
sequence number not yet acknowledged, and persists it in a checkpoint file. At start the log reads
every segment and keeps the records at or above the watermark: those are replayed, in order.
A record acknowledged just before a crash may be replayed once more; the sink deduplicates on
``event_id``, so that is harmless. For the same reason the checkpoint is written lazily, with the
batched fsync: a stale watermark only means a few more harmless replays.

Nothing slow happens under the lock that ``append`` takes: the fsync runs on a duplicate of the
file descriptor outside it, so a request never waits for the disk.

Segment files are named by their first sequence number; a segment is deleted once every record in
it is below the watermark. Frame: ``>IIHH`` (payload length, CRC32 of the payload, topic length,
key length), then topic, key and value bytes. A torn frame at the end of the last segment (a crash
mid-write) is cut off at start.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from feedback.errors import WalError, WalFullError

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">IIHH")
_CHECKPOINT = "watermark"


@dataclass(frozen=True, slots=True)
class WalRecord:
    """One event waiting for Kafka's acknowledgement."""

    seq: int
    topic: str
    key: bytes
    value: bytes


@dataclass(slots=True)
class _Segment:
    base_seq: int
    path: Path
    last_seq: int
    size: int


def disk_usage(directory: Path) -> tuple[int, int]:
    """Bytes and segment files of a log directory and the logs beneath it (a gateway's per-process slots),
    read without opening the logs (their owners may run)."""
    sizes = [path.stat().st_size for path in directory.rglob("*.wal")] if directory.is_dir() else []
    return sum(sizes), len(sizes)


class WriteAheadLog:
    """Durable, bounded log of unacknowledged records; thread-safe."""

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int, fsync_each: bool) -> None:
        self._dir = directory
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._fsync_each = fsync_each
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()  # one checkpoint writer at a time, outside _lock
        # ordered by seq (appends are in order), so the oldest unacknowledged record is the first key
        self._pending: OrderedDict[int, WalRecord] = OrderedDict()
        self._checkpoint_dirty = False
        self._segments: list[_Segment] = []
        self._next_seq = 0
        self._watermark = 0
        self._dirty = False
        self._file: BinaryIO | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._recover()
        except OSError as exc:
            raise WalError(f"write-ahead log at {directory} could not be opened: {exc}") from exc

    # -- recovery ---------------------------------------------------------------------------
    def _recover(self) -> None:
        checkpoint = self._dir / _CHECKPOINT
        if checkpoint.exists():
            self._watermark = int(checkpoint.read_text() or 0)
        self._next_seq = self._watermark
        for path in sorted(self._dir.glob("*.wal")):
            base = int(path.stem)
            seq = base
            for seq, topic, key, value in self._read_segment(path, base):
                if seq >= self._watermark:
                    self._pending[seq] = WalRecord(seq, topic, key, value)
            last = seq if path.stat().st_size else base - 1
            self._segments.append(_Segment(base, path, last, path.stat().st_size))
            self._next_seq = max(self._next_seq, last + 1)
        self._drop_acked_segments()
        if self._pending:
            log.warning("write-ahead log holds %d unacknowledged events; replaying", len(self._pending))

    def _read_segment(self, path: Path, base: int) -> Iterator[tuple[int, str, bytes, bytes]]:
        data = path.read_bytes()
        offset, seq = 0, base
        while offset + _HEADER.size <= len(data):
            length, crc, topic_len, key_len = _HEADER.unpack_from(data, offset)
            body = data[offset + _HEADER.size : offset + _HEADER.size + length]
            if len(body) < length or zlib.crc32(body) != crc:
                break
            topic = body[:topic_len].decode()
            key = body[topic_len : topic_len + key_len]
            yield seq, topic, key, body[topic_len + key_len :]
            offset += _HEADER.size + length
            seq += 1
        if offset < len(data):  # a torn or corrupt tail from a crash mid-write
            log.warning("write-ahead log %s: cutting %d torn bytes", path.name, len(data) - offset)
            with path.open("r+b") as fh:
                fh.truncate(offset)

    # -- writing ----------------------------------------------------------------------------
    def append(self, topic: str, key: bytes, value: bytes) -> WalRecord:
        """Append one record; raises WalFullError when the log is at its size bound."""
        body = topic.encode() + key + value
        frame = _HEADER.pack(len(body), zlib.crc32(body), len(topic.encode()), len(key)) + body
        with self._lock:
            if self.size_bytes + len(frame) > self._max_bytes:
                raise WalFullError(f"write-ahead log is full ({self.size_bytes} of {self._max_bytes} bytes)")
            segment = self._writable_segment()
            record = WalRecord(self._next_seq, topic, key, value)
            try:
                fh = self._open_file(segment)
                fh.write(frame)
                fh.flush()
                if self._fsync_each:
                    os.fsync(fh.fileno())
                else:
                    self._dirty = True
            except OSError as exc:
                raise WalError(f"write-ahead log write failed: {exc}") from exc
            segment.last_seq = record.seq
            segment.size += len(frame)
            self._next_seq += 1
            self._pending[record.seq] = record
            return record

    def _writable_segment(self) -> _Segment:
        if not self._segments or self._segments[-1].size >= self._segment_bytes:
            self._close_file()
            path = self._dir / f"{self._next_seq:020d}.wal"
            self._segments.append(_Segment(self._next_seq, path, self._next_seq - 1, 0))
        return self._segments[-1]

    def _open_file(self, segment: _Segment) -> BinaryIO:
        if self._file is None or self._file.name != str(segment.path):
            self._close_file()
            self._file = segment.path.open("ab")
        return self._file

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def sync(self) -> None:
        """fsync what was written since the last sync, and persist the watermark if it moved."""
        fd: int | None = None
        with self._lock:
            if self._dirty and self._file is not None:
                fd = os.dup(self._file.fileno())  # fsync outside the lock: appends go on meanwhile
                self._dirty = False
            checkpoint_due, self._checkpoint_dirty = self._checkpoint_dirty, False
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if checkpoint_due:
            self._write_checkpoint()

    # -- acknowledgement --------------------------------------------------------------------
    def ack(self, seq: int) -> None:
        """Forget one record: Kafka has it."""
        with self._lock:
            self._pending.pop(seq, None)
            watermark = next(iter(self._pending), self._next_seq)
            if watermark != self._watermark:
                self._watermark = watermark
                self._checkpoint_dirty = True
                self._drop_acked_segments()

    def _write_checkpoint(self) -> None:
        with self._checkpoint_lock:
            tmp = self._dir / (_CHECKPOINT + ".tmp")
            tmp.write_text(str(self._watermark))
            tmp.replace(self._dir / _CHECKPOINT)

    def _drop_acked_segments(self) -> None:
        while len(self._segments) > 1 and self._segments[0].last_seq < self._watermark:
            self._segments.pop(0).path.unlink(missing_ok=True)
        last = self._segments[-1] if self._segments else None
        if last is not None and last.size >= self._segment_bytes and last.last_seq < self._watermark:
            self._close_file()
            self._segments.pop().path.unlink(missing_ok=True)

    # -- reading ----------------------------------------------------------------------------
    def pending(self, from_seq: int = 0, limit: int | None = None) -> list[WalRecord]:
        """Up to ``limit`` unacknowledged records with ``seq >= from_seq``, in order."""
        with self._lock:
            start = max(from_seq, self._watermark)
            if start >= self._next_seq:
                return []
            if start == self._watermark and limit is None:
                return list(self._pending.values())
            out: list[WalRecord] = []
            for seq in range(start, self._next_seq):
                record = self._pending.get(seq)
                if record is not None:
                    out.append(record)
                    if limit is not None and len(out) >= limit:
                        break
            return out

    @property
    def low_watermark(self) -> int:
        """The smallest sequence number not yet acknowledged."""
        return self._watermark

    @property
    def pending_count(self) -> int:
        """How many records wait for Kafka."""
        return len(self._pending)

    @property
    def size_bytes(self) -> int:
        """Bytes the log's segments take on disk."""
        return sum(s.size for s in self._segments)

    @property
    def max_bytes(self) -> int:
        """The configured size bound, bytes."""
        return self._max_bytes

    def close(self) -> None:
        """Sync and close the current segment."""
        self.sync()
        with self._lock:
            self._close_file()
