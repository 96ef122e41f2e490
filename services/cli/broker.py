"""Running the local Kafka broker through infra/kafka/kafka.sh."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from feedback.settings import LocalKafkaSettings

KAFKA_SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "kafka" / "kafka.sh"

# kafka.sh exit codes
RUNNING, NOT_RUNNING, NOT_ANSWERING = 0, 3, 4


def script_env(local: LocalKafkaSettings) -> dict[str, str]:
    """The environment kafka.sh reads its settings from."""
    return os.environ | {
        "FLYWHEEL_KAFKA_PORT": str(local.port),
        "FLYWHEEL_KAFKA_CONTROLLER_PORT": str(local.controller_port),
        "FLYWHEEL_KAFKA_DATA_DIR": str(local.data_dir),
        "FLYWHEEL_KAFKA_HEAP": local.heap,
        "FLYWHEEL_KAFKA_NODES": str(local.nodes),
    }


def run_script(command: str, local: LocalKafkaSettings, *, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run one kafka.sh subcommand; output goes to the terminal unless captured."""
    return subprocess.run(
        ["bash", str(KAFKA_SCRIPT), command],
        env=script_env(local),
        text=True,
        capture_output=capture,
        check=False,
    )


def is_running(local: LocalKafkaSettings) -> bool:
    """Whether the local broker runs and answers."""
    return run_script("status", local, capture=True).returncode == RUNNING
