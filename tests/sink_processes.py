"""Sink shards as real ``flywheel sink run`` processes, and what Kafka's group coordinator says of them.

Shared by the integration test of sink shards and the sinks benchmark (which puts this folder on
``sys.path`` itself). Each shard's Kafka client id is ``shard-<name>``, so the group's description
names its members by shard (:func:`member`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import CoordinatorNotAvailableError

from feedback.settings import KafkaSettings

_PROGRESS = re.compile(r"sink shard \S+: (\{.*\})$")


@dataclass
class ShardProcess:
    """A running ``flywheel sink run`` process: its shard name, DuckDB file, log and process."""

    name: str
    db: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def stats(self) -> dict[str, Any]:
        """The counts of the shard's latest progress line (empty before the first)."""
        lines = [m.group(1) for line in self.log.read_text().splitlines() if (m := _PROGRESS.search(line))]
        return dict(json.loads(lines[-1])) if lines else {}

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 120) -> int:
        """Send ``signum`` and return the exit code once the process ended."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout=timeout_s)


def member(name: str) -> str:
    """The client id shard ``name``'s consumer shows in the group (the sink adds ``-sink``)."""
    return f"shard-{name}-sink"


def shard_env(kafka: KafkaSettings, name: str, lake: Path, **worker: Any) -> dict[str, str]:
    """The environment of shard ``name``: the test's topics and group, the shared lake, ``worker`` settings."""
    env = dict(os.environ) | {
        "FLYWHEEL_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "FLYWHEEL_KAFKA__CONSUMER_GROUP": kafka.consumer_group,
        "FLYWHEEL_KAFKA__CLIENT_ID": f"shard-{name}",
        "FLYWHEEL_KAFKA__TOPICS__PARTITIONS": str(kafka.topics.partitions),
        "FLYWHEEL_WORKER__LAKE_DIR": str(lake),
        "FLYWHEEL_GATEWAY__DRAIN_TIMEOUT_S": "5",  # the audit producer's last flush at exit
    }
    for field, topic in kafka.topics.model_dump().items():
        if isinstance(topic, str):
            env[f"FLYWHEEL_KAFKA__TOPICS__{field.upper()}"] = topic
    return env | {f"FLYWHEEL_WORKER__{key.upper()}": str(value) for key, value in worker.items()}


@contextmanager
def sink_shard(
    kafka: KafkaSettings, workdir: Path, name: str, lake: Path, *, progress_s: float = 0.5, **worker: Any
) -> Iterator[ShardProcess]:
    """Start ``flywheel sink run --shard name`` with its DuckDB file in ``workdir`` and a log of this start's own.

    A process still running at the end is killed (SIGKILL).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    db, log = workdir / f"{name}.duckdb", workdir / f"shard-{name}-{len(list(workdir.glob(f'shard-{name}-*.log')))}.log"
    args = ["sink", "run", "--shard", name, "--db", str(db), "--progress-s", str(progress_s)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", *args],
            env=shard_env(kafka, name, lake, **worker),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield ShardProcess(name, db, log, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


def group_members(kafka: KafkaSettings) -> dict[str, set[tuple[str, int]]]:
    """The group's members by client id, each with the (topic, partition) pairs it is assigned.

    Empty while the broker has no coordinator for the group yet (a fresh broker creates its offsets topic first).
    """
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    try:
        group = admin.describe_groups([kafka.consumer_group])[kafka.consumer_group]
    except CoordinatorNotAvailableError:
        return {}
    finally:
        admin.close()
    members: dict[str, set[tuple[str, int]]] = {}
    for member in group["members"]:
        assigned = (member.get("member_assignment") or {}).get("assigned_partitions", [])
        pairs = {(a["topic"], p) for a in assigned for p in a["partitions"]}
        members[member["client_id"]] = members.get(member["client_id"], set()) | pairs
    return members
