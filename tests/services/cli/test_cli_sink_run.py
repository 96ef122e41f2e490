"""``flywheel sink run``'s refusals: a sink beside the worker needs a valid shard name (exit 2)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from services.cli.main import app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "a sink beside the worker is one shard of several: name it with --shard"),
        (["--shard", "Shard/B"], "--shard: String should match pattern"),
        (["--shard", "x" * 33], "--shard: String should match pattern"),
    ],
)
def test_a_sink_process_needs_a_valid_shard_name(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["sink", "run", *args], env={"FLYWHEEL_WORKER__SINK_SHARD": ""})
    assert result.exit_code == 2
    assert message in result.output
