"""Write-ahead log slots of a gateway of several processes, and the leftover logs its processes replay."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
from pipeline_events import interaction, topic_events, wait_until

from feedback.errors import WalError
from feedback.settings import KafkaSettings, Settings, WalSettings
from feedback.wal import WriteAheadLog, disk_usage
from services.gateway.processes import create_single_app, process_settings
from services.gateway.wal_slots import LOCK_FILE, LeftoverLogs, claim_slot, hold, leftovers


def is_locked(directory: Path) -> bool:
    """Whether some open file description holds ``directory``'s lock (probing takes it for an instant)."""
    return file_locked(directory / LOCK_FILE)


def file_locked(path: Path) -> bool:
    """Whether some open file description holds an exclusive ``flock`` on the file ``path``."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def write_log(directory: Path, topic: str, count: int) -> list[str]:
    """``count`` interaction events left unacknowledged in a log at ``directory``; their interaction ids."""
    wal = WriteAheadLog(directory, max_bytes=1 << 20, segment_bytes=1 << 16, fsync_each=True)
    events = [interaction(n) for n in range(count)]
    for event in events:
        wal.append(topic, event.kafka_key(), event.encode())
    wal.close()
    return [event.interaction_id for event in events]


def test_each_claim_gets_a_free_slot_and_a_released_slot_is_claimed_again(tmp_path: Path) -> None:
    first, second = claim_slot(tmp_path, 2), claim_slot(tmp_path, 2)
    assert (first[0], second[0]) == (0, 1)
    assert first[1].directory == tmp_path / "process-0"
    assert (tmp_path / "process-0" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert is_locked(tmp_path / "process-0")
    third = claim_slot(tmp_path, 2)  # all taken: the next one past them
    assert third[0] == 2
    first[1].release()
    assert not is_locked(tmp_path / "process-0")
    again = claim_slot(tmp_path, 2)
    assert again[0] == 0
    for _, held in (second, third, again):
        held.release()


def test_a_held_directory_cannot_be_held_twice(tmp_path: Path) -> None:
    held = hold(tmp_path / "wal")
    assert held is not None
    assert hold(tmp_path / "wal") is None
    held.release()
    again = hold(tmp_path / "wal")
    assert again is not None
    again.release()


def test_a_single_process_gateway_refuses_a_log_another_process_holds(tmp_path: Path) -> None:
    held = hold(tmp_path / "wal")
    assert held is not None
    settings = Settings(gateway={"wal": {"dir": tmp_path / "wal"}})
    with pytest.raises(WalError, match=r"another gateway process writes the write-ahead log .*/wal; give this one"):
        create_single_app(settings)
    held.release()


def test_leftovers_are_the_logs_no_live_process_of_the_gateway_writes(tmp_path: Path) -> None:
    for directory in (tmp_path, tmp_path / "process-0", tmp_path / "process-2", tmp_path / "process-3"):
        write_log(directory, "t", 1)
    (tmp_path / "process-5").mkdir()  # a slot without segments: nothing to replay
    (tmp_path / "process-x").mkdir()
    write_log(tmp_path / "process-x", "t", 1)  # not a slot name: never touched
    assert leftovers(tmp_path, 2) == [tmp_path, tmp_path / "process-2", tmp_path / "process-3"]
    assert leftovers(tmp_path, 4) == [tmp_path]
    assert leftovers(tmp_path, 1) == [tmp_path / "process-0", tmp_path / "process-2", tmp_path / "process-3"]
    assert leftovers(tmp_path / "missing", 2) == []


def test_disk_usage_counts_the_slots_beneath_a_log(tmp_path: Path) -> None:
    write_log(tmp_path, "t", 1)
    write_log(tmp_path / "process-1", "t", 2)
    size, segments = disk_usage(tmp_path)
    assert segments == 2
    assert size == sum(path.stat().st_size for path in tmp_path.rglob("*.wal"))


def test_each_process_gets_its_log_and_an_even_share_of_the_gpu(tmp_path: Path) -> None:
    settings = Settings(gateway={"processes": 4, "vllm": {"gpu_memory_utilization": 0.8}, "wal": {"dir": tmp_path}})
    mine = process_settings(settings, tmp_path / "process-3")
    assert mine.gateway.vllm.gpu_memory_utilization == pytest.approx(0.2, abs=1e-12)
    assert mine.gateway.wal == WalSettings(dir=tmp_path / "process-3")
    assert mine.gateway.processes == 4
    assert settings.gateway.vllm.gpu_memory_utilization == 0.8  # the original is untouched


@pytest.mark.kafka
def test_a_leftover_log_is_replayed_into_kafka_and_let_go(kafka_isolated: KafkaSettings, tmp_path: Path) -> None:
    topic = kafka_isolated.topics.interactions
    leftover = tmp_path / "process-3"
    ids = write_log(leftover, topic, 3)
    settings = Settings(kafka=kafka_isolated, gateway={"wal": {"dir": tmp_path}, "drain_timeout_s": 5})
    drain = LeftoverLogs(settings, leftovers(tmp_path, 2))
    drain.start()
    try:
        events = topic_events(kafka_isolated.bootstrap_servers, topic, 3)
        assert sorted(getattr(e, "interaction_id", None) for e in events) == sorted(ids)
        wait_until(lambda: not is_locked(leftover), 30, "the leftover to be let go")
    finally:
        drain.close()
    replayed = WriteAheadLog(leftover, max_bytes=1 << 20, segment_bytes=1 << 16, fsync_each=False)
    assert replayed.pending_count == 0
    replayed.close()


def test_an_empty_leftover_is_let_go_at_once(tmp_path: Path) -> None:
    leftover = tmp_path / "process-2"
    wal = WriteAheadLog(leftover, max_bytes=1 << 20, segment_bytes=1 << 16, fsync_each=True)
    record = wal.append("t", b"k", b"v")
    wal.ack(record.seq)
    wal.close()
    drain = LeftoverLogs(Settings(gateway={"wal": {"dir": tmp_path}}), leftovers(tmp_path, 2))
    drain.start()
    assert not is_locked(leftover)
    drain.close()
