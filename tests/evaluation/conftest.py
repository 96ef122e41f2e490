"""Synthetic experiments written into real, migrated DuckDB files (seeded numpy data)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from experiment_data import FB_KEYS, ROW_KEYS, write_rows

from feedback.store import DuckDBStore


@pytest.fixture
def experiment_store(tmp_path: Path) -> Iterator[Callable[..., DuckDBStore]]:
    """Build a store holding synthetic experiments: ``experiment_store(dict_of_columns, ...)``."""
    stores: list[DuckDBStore] = []

    def build(*datasets: dict[str, list[Any]]) -> DuckDBStore:
        path = tmp_path / f"exp{len(stores)}.duckdb"
        merged: dict[str, list[Any]] = {k: [] for k in (*ROW_KEYS, *FB_KEYS)}
        for data in datasets:
            for key in merged:
                merged[key].extend(data[key])
        write_rows(path, merged)
        store = DuckDBStore(path)
        stores.append(store)
        return store

    yield build
    for store in stores:
        store.close()
