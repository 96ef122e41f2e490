"""Deployment state: the changes, the record codec, and the compacted topic read by every replica."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from kafka import KafkaProducer

from feedback import deployments
from feedback.deployments import (
    STATE_KEY,
    DeploymentError,
    DeploymentState,
    DeploymentWatcher,
    decode_state,
    initial_state,
    publish_state,
)
from feedback.settings import KafkaSettings

CHAMPION = "smollm2-135m-instruct"
CHALLENGER = "smollm2-135m-instruct+ab12"


@pytest.fixture
def start() -> DeploymentState:
    return initial_state(CHAMPION, [5, 10, 25, 50])


def test_phases_along_a_whole_ramp(start: DeploymentState) -> None:
    assert (start.phase, start.challenger_percent, start.revision) == ("champion-only", 0.0, 0)
    shadow = deployments.set_challenger(start, CHALLENGER, by="admin", sample_rate=0.5)
    assert (shadow.phase, shadow.challenger, shadow.shadow_sample_rate, shadow.revision) == (
        "shadow",
        CHALLENGER,
        0.5,
        1,
    )
    assert shadow.deployment_id != start.deployment_id
    ab5 = deployments.set_mode(shadow, "ab", by="admin", step=0)
    ab25 = deployments.set_mode(ab5, "ab", by="decision-engine", step=2)
    assert [s.phase for s in (ab5, ab25)] == ["ab-5", "ab-25"]
    assert ab25.challenger_percent == 25.0
    assert ab25.deployment_id == shadow.deployment_id  # the salt holds through the ramp
    assert ab25.updated_by == "decision-engine"
    promoted = deployments.promote(ab25, by="admin")
    assert (promoted.champion, promoted.challenger, promoted.phase, promoted.revision) == (
        CHALLENGER,
        None,
        "champion-only",
        4,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: deployments.set_mode(s, "ab", by="a"), "there is no challenger; set one first"),
        (lambda s: deployments.promote(s, by="a"), "there is no challenger to promote"),
        (lambda s: deployments.roll_back(s, by="a"), "there is no challenger to roll back"),
        (lambda s: deployments.set_challenger(s, CHAMPION, by="a"), f"{CHAMPION!r} is already the champion"),
    ],
)
def test_changes_not_allowed_without_a_challenger(start: DeploymentState, change: object, message: str) -> None:
    with pytest.raises(DeploymentError) as info:
        change(start)  # type: ignore[operator]
    assert str(info.value) == message


def test_an_ab_ramp_only_moves_up(start: DeploymentState) -> None:
    ab10 = deployments.set_mode(deployments.set_challenger(start, CHALLENGER, by="a"), "ab", by="a", step=1)
    with pytest.raises(DeploymentError, match="an A/B ramp only moves up; roll back to end it"):
        deployments.set_mode(ab10, "ab", by="a", step=0)
    with pytest.raises(DeploymentError, match="an A/B ramp only moves up"):
        deployments.set_mode(ab10, "shadow", by="a")
    with pytest.raises(DeploymentError, match=r"step must be in \[0, 3\] \(ramp \[5, 10, 25, 50\]\), got 4"):
        deployments.set_mode(ab10, "ab", by="a", step=4)
    rolled = deployments.roll_back(ab10, by="a")
    assert (rolled.challenger, rolled.phase, rolled.champion) == (None, "champion-only", CHAMPION)


def test_records_round_trip_and_garbage_is_refused(start: DeploymentState) -> None:
    state = deployments.set_challenger(start, CHALLENGER, by="a")
    assert decode_state(state.encode()) == state
    with pytest.raises(DeploymentError, match="invalid deployment record"):
        decode_state(b'{"deployment_id": ""}')


def test_two_watchers_on_one_broker_apply_the_latest_record(kafka_isolated: KafkaSettings) -> None:
    start = initial_state(CHAMPION, [5, 10, 25, 50])
    shadow = deployments.set_challenger(start, CHALLENGER, by="admin")
    ab5 = deployments.set_mode(shadow, "ab", by="admin")
    publish_state(kafka_isolated, shadow)
    applied: dict[str, list[str]] = {"a": [], "b": []}
    lock = threading.Lock()

    def recorder(name: str) -> Callable[[DeploymentState], None]:
        def apply(state: DeploymentState) -> None:
            with lock:
                applied[name].append(state.phase)

        return apply

    watchers = [DeploymentWatcher(kafka_isolated, start, recorder(n)) for n in ("a", "b")]
    for watcher in watchers:
        watcher.start()
    try:
        assert all(w.caught_up.wait(30) for w in watchers)
        publish_state(kafka_isolated, ab5)
        # A stale record (an older revision) and garbage are ignored.
        producer = KafkaProducer(bootstrap_servers=kafka_isolated.bootstrap_servers)
        producer.send(kafka_isolated.topics.deployments, key=STATE_KEY, value=shadow.encode())
        producer.send(kafka_isolated.topics.deployments, key=STATE_KEY, value=b"not json")
        producer.flush()
        producer.close()
        publish_state(kafka_isolated, deployments.set_mode(ab5, "ab", by="admin", step=1))
        assert all(w.wait_for(3, timeout_s=30) for w in watchers)
        assert [w.state.phase for w in watchers] == ["ab-10", "ab-10"]
        assert applied == {"a": ["shadow", "ab-5", "ab-10"], "b": ["shadow", "ab-5", "ab-10"]}
    finally:
        for watcher in watchers:
            watcher.close()
