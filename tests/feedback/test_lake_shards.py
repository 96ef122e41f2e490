"""Sink shards sharing one lake: file names per shard, the offsets an export vouches for, deduplicating views.

Two real DuckDB files export into one lake root, holding some events both (as two shards do
around a rebalance); the analyst sandbox's views must count each event once, keeping the copy
ingested first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from pipeline_events import feedback, interaction

from feedback.lake import Lake
from feedback.sandbox import run_query
from feedback.store import DuckDBStore, Located

SHARED = range(10, 20)  # interactions (and feedback on them) both shards wrote
CHATS = [interaction(n) for n in range(30)]  # one event each, whichever shard writes it
RATINGS = [feedback(n) for n in range(30)]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[DuckDBStore, DuckDBStore]]:
    a, b = DuckDBStore(tmp_path / "a.duckdb"), DuckDBStore(tmp_path / "b.duckdb")
    yield a, b
    a.close()
    b.close()


def write(store: DuckDBStore, numbers: range, first_offset: int, feedback_offset: int | None = None) -> None:
    """Interactions ``numbers`` from ``first_offset`` on partition 0, and feedback on the even ones."""
    evens = [n for n in numbers if n % 2 == 0]
    first_feedback = first_offset if feedback_offset is None else feedback_offset
    located = [Located(CHATS[n], "interactions", 0, first_offset + i) for i, n in enumerate(numbers)]
    located += [Located(RATINGS[n], "feedback", 0, first_feedback + i) for i, n in enumerate(evens)]
    store.write_batch(located)


def files(lake: Path) -> list[Path]:
    return sorted(lake.glob("*/*/day=*/*.parquet"))


def test_two_shards_keep_their_own_files_and_the_views_count_each_event_once(
    stores: tuple[DuckDBStore, DuckDBStore], tmp_path: Path
) -> None:
    a, b = stores
    lake = tmp_path / "lake"
    write(b, range(10, 30), first_offset=100)  # b first: its copies of the shared events are the earlier ones
    write(a, range(0, 20), first_offset=0)  # (and a's files sort first: the views must order by ingestion)
    Lake(a, lake, shard="a").export()
    Lake(b, lake, shard="b").export()

    written = {(f.parts[-4], f.parts[-3], f.name.split("-")[1]) for f in files(lake)}  # part-<shard>-<since>-0
    trees, tables = ("raw", "redacted"), ("interactions", "feedback")
    assert written == {(tree, table, shard) for tree in trees for table in tables for shard in "ab"}
    with duckdb.connect() as con:
        stored = con.execute("SELECT count(*) FROM read_parquet(?)", [f"{lake}/redacted/interactions/*/*.parquet"])
        assert stored.fetchone() == (40,)  # the shared ten are in the files twice

    counts = run_query("SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM interactions", lake)
    assert counts.table.to_pylist() == [{"n": 30, "ids": 30}]
    feedback_rows = run_query("SELECT count(*) AS n FROM feedback", lake)
    assert feedback_rows.table.to_pylist() == [{"n": 15}]  # even numbers of 0..29, once each
    kept = run_query(
        f"SELECT min(kafka_offset) AS lo, max(kafka_offset) AS hi FROM interactions WHERE seed BETWEEN {SHARED.start} "  # noqa: S608
        f"AND {SHARED.stop - 1}",
        lake,
    )
    assert kept.table.to_pylist() == [{"lo": 100, "hi": 109}]  # b's copies, ingested first (a's are at 10..19)
    raw = run_query("SELECT count(*) AS n FROM interactions_raw", lake, admin=True)
    assert raw.table.to_pylist() == [{"n": 30}]  # the raw views deduplicate too


def test_the_only_sink_names_files_as_before(stores: tuple[DuckDBStore, DuckDBStore], tmp_path: Path) -> None:
    write(stores[0], range(0, 3), first_offset=0)
    Lake(stores[0], tmp_path / "lake").export()
    names = [f.name for f in files(tmp_path / "lake")]
    assert names
    assert all(re.fullmatch(r"part-\d+-0\.parquet", name) for name in names)


def test_an_export_returns_the_offsets_its_rows_cover(stores: tuple[DuckDBStore, DuckDBStore], tmp_path: Path) -> None:
    a = stores[0]
    lake = Lake(a, tmp_path / "lake", shard="a")
    write(a, range(0, 5), first_offset=0)
    assert lake.export().offsets == {("interactions", 0): 5, ("feedback", 0): 3}
    write(a, range(5, 7), first_offset=5, feedback_offset=3)
    again = lake.export()
    assert again.offsets == {("interactions", 0): 7, ("feedback", 0): 4}
    assert again.rows == {"interactions": 2, "feedback": 1}
    assert lake.export().offsets == again.offsets  # nothing new: the same offsets, vouched for again
