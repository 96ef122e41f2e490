"""The moment-based A/B report against one grouped aggregate scan, over 10 million responses.

Data: 10,000,000 served responses of 400,000 users over 30 days in a DuckDB file, generated in
SQL (``range`` + ``random``) with the columns of the ``interactions`` and ``feedback`` tables
(no primary-key indexes: this measures reads). Three ramp phases (ab-5, ab-25, ab-50, ten days
each), arms by a stable hash of the user; about 30% of responses get a thumb. The per-unit rollups
the sink keeps (``feedback.rollup``) are then built by their migration's own SQL over those rows (one
row per user and phase), and every user gets a second row of zeros: the most rows a live store
holds between two merges (the sink merges once the table has doubled), so the worst case.

Competitors, each warmed up once, then timed in turn within each of 5 repeats (so load from
other processes hits all alike); best and median wall time, the median per-repeat ratio to the
scan, and the same for CPU time (steadier than wall time on a shared machine) are printed:
- scan: one grouped aggregate (count, sum, sum of squares of latency per arm per day);
- moments: the report's moment-based part: the check that the rollup holds every response and
  feedback row (a filtered count over the responses), per-unit sufficient statistics of all 8
  built-in metrics per arm and phase in one SQL pass over ``unit_rollup``, then every test (Welch
  absolute and relative, always-valid sequence, Bayesian, power, SRM, Holm) in Python;
- moments raw: the same from the raw tables (``moments_sql``: the feedback join and per-user
  grouping of every response), the path custom SQL metrics take;
- samples: the rank and resampling parts on bounded samples (Mann-Whitney on up to 100,000
  units per arm, bootstrap of the p95 lift on up to 100,000 responses per arm, 1,000 replicates);
- floor: what any exact per-user report must do before it sums a single metric: join the
  feedback (aggregated per interaction) to the responses and group them per user, phase and arm,
  counting rows only. ``moments`` minus ``floor`` is the cost of the metrics themselves.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb

from evaluation.config import ExperimentSettings
from evaluation.guards import adjust, check_srm
from evaluation.metrics import BUILT_IN, FEEDBACK_CTE, Moments, metric_moments, moments_sql, phase_split, ratio_of
from evaluation.quantiles import bootstrap_quantile_lift, latency_sample
from evaluation.ranks import mann_whitney
from evaluation.report import metric_result
from feedback.migrations import MIGRATIONS
from feedback.rollup import MIGRATION

ROWS, USERS, DAYS = 10_000_000, 400_000, 30
GENERATE = f"""
CREATE TABLE interactions AS
WITH base AS (SELECT range AS k, (random() * {USERS})::BIGINT AS u, random() * {DAYS} AS t FROM range({ROWS}))
SELECT 'i' || k AS interaction_id, 'u' || u AS unit_id,
       TIMESTAMPTZ '2026-10-01 00:00:00+00' + to_microseconds((t * 86400e6)::BIGINT) AS ts,
       CASE WHEN t < 10 THEN 'ab-5' WHEN t < 20 THEN 'ab-25' ELSE 'ab-50' END AS phase,
       CASE WHEN hash(u) % 100 < (CASE WHEN t < 10 THEN 5 WHEN t < 20 THEN 25 ELSE 50 END)
            THEN 'challenger' ELSE 'champion' END AS arm,
       'served' AS role, 'bench' AS deployment_id, 'ok' AS completion,
       exp(5 + 0.5 * sqrt(-2 * ln(random())) * cos(2 * pi() * random())) AS latency_ms,
       (5 + random() * 60)::INTEGER AS completion_tokens, 0.5 + random() / 2 AS confidence,
       CASE WHEN random() < 0.03 THEN 'timeout' END AS error
FROM base;
CREATE TABLE feedback AS
SELECT interaction_id, CASE WHEN random() < 0.7 THEN 'up' ELSE 'down' END AS thumb,
       (1 + random() * 4)::INTEGER AS rating, CASE WHEN random() < 0.1 THEN 'fixed' END AS correction
FROM interactions WHERE random() < 0.3;
"""  # noqa: S608 (constants of this file)
SECOND_ROWS = """
INSERT INTO unit_rollup SELECT deployment_id, phase, arm, unit_id, NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
FROM unit_rollup
"""
SCAN = """
SELECT arm, ts::DATE AS day, count(*) AS n, sum(latency_ms) AS s, sum(latency_ms * latency_ms) AS ss
FROM interactions GROUP BY ALL
"""
FLOOR = f"""
WITH {FEEDBACK_CTE}
SELECT phase, challenger, count(*) AS units, sum(responses) AS responses, sum(rated) AS rated
FROM (SELECT i.phase, i.arm = 'challenger' AS challenger, i.unit_id, count(*) AS responses, count(fb.ups) AS rated
      FROM interactions i LEFT JOIN fb USING (interaction_id)
      WHERE i.deployment_id = 'bench' AND i.role = 'served' GROUP BY ALL)
GROUP BY ALL
"""  # noqa: S608 (constants of this file)


class Connection:
    """A DuckDB connection with the ``query`` interface of the evaluation package."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self.con.execute(sql, list(params))
        names = [d[0] for d in cursor.description or []]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def moment_report(db: Connection, settings: ExperimentSettings, moments: Callable[[], Moments]) -> int:
    """The moment-based part of the report; returns the number of tests computed."""
    tests = 0
    for phase, arms in moments().items():
        units = {arm: stats["error_rate"].n for arm, stats in arms.items()}
        check_srm(units, phase_split(phase) or {}, settings.srm_threshold)
        results = [
            metric_result(m, arms["champion"][m.name], arms["challenger"][m.name], 10.0, settings) for m in BUILT_IN
        ]
        adjust([r.relative.p_value for r in results], settings.correction)
        tests += len(results)
    return tests


def raw_moments(db: Connection) -> Moments:
    """``metric_moments`` as it reads the raw tables (the rollup left aside)."""
    out: Moments = {}
    for row in db.query(moments_sql(BUILT_IN), ["bench"]):
        out.setdefault(row["phase"], {})[row["arm"]] = {m.name: ratio_of(row, k) for k, m in enumerate(BUILT_IN)}
    return out


def sample_parts(db: Connection, settings: ExperimentSettings) -> None:
    """Rank and resampling methods on bounded samples of the last phase."""
    primary = next(m for m in BUILT_IN if m.name == "latency_ms")
    mann_whitney(db, "bench", "ab-50", primary, sample_per_arm=100_000, seed=0)
    sample = latency_sample(db, "bench", "ab-50", per_arm=100_000, seed=0)
    bootstrap_quantile_lift(sample["champion"], sample["challenger"], 0.95, resamples=1000, seed=0)


def largest_difference(db: Connection) -> float:
    """The largest relative difference between any sufficient statistic of the two paths."""
    rolled, raw = metric_moments(db, "bench", BUILT_IN), raw_moments(db)
    worst = 0.0
    for phase, arms in raw.items():
        for arm, stats in arms.items():
            for name, b in stats.items():
                a = rolled[phase][arm][name]
                pairs = [(a.n, b.n), (a.m.sum, b.m.sum), (a.m.sum_squares, b.m.sum_squares), (a.d.sum, b.d.sum)]
                pairs += [(a.d.sum_squares, b.d.sum_squares), (a.sum_product, b.sum_product)]
                worst = max([worst, *(abs(x - y) / max(abs(y), 1e-300) for x, y in pairs)])
    return worst


Times = dict[str, list[float]]


def interleaved(competitors: dict[str, Callable[[], object]], repeats: int = 5) -> tuple[Times, Times]:
    """Wall and CPU seconds per repeat for each competitor, run in turn within each repeat (after one
    warm-up each) so that a busy machine slows all of them alike. CPU time (all of this process's
    threads, DuckDB's included) shifts less than wall time when other processes share the cores."""
    for fn in competitors.values():
        fn()
    wall: Times = {name: [] for name in competitors}
    cpu: Times = {name: [] for name in competitors}
    for _ in range(repeats):
        for name, fn in competitors.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def median_ratio(values: list[float], base: list[float]) -> float:
    """The median over repeats of ``values / base`` (both measured in the same repeat)."""
    return statistics.median(v / b for v, b in zip(values, base, strict=True))


def main() -> None:
    threads = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {threads} cpus, duckdb {duckdb.__version__}")
    settings = ExperimentSettings()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(str(Path(tmp) / "bench.duckdb"), config={"threads": threads})
        start = time.perf_counter()
        con.execute(GENERATE)
        rows = con.execute("SELECT count(*) FROM interactions").fetchone()
        print(f"generated {rows[0] if rows else 0:,} responses in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        con.execute(dict(MIGRATIONS)[MIGRATION])
        con.execute(SECOND_ROWS)
        units = con.execute("SELECT count(*) FROM unit_rollup").fetchone()
        print(f"rolled up into {units[0] if units else 0:,} unit rows in {time.perf_counter() - start:.1f} s\n")
        db = Connection(con)
        times, cpu = interleaved(
            {
                "scan: count, sum, sum sq per arm per day": lambda: con.execute(SCAN).fetchall(),
                "moments: 8 metrics x 3 phases, all tests": lambda: moment_report(
                    db, settings, lambda: metric_moments(db, "bench", BUILT_IN)
                ),
                "moments raw: the same from raw tables": lambda: moment_report(db, settings, lambda: raw_moments(db)),
                "samples: Mann-Whitney + bootstrap p95": lambda: sample_parts(db, settings),
                "floor: feedback join + per-user grouping": lambda: con.execute(FLOOR).fetchall(),
            }
        )
        scan, moments, _, samples, floor = times.values()
        header = f"{'competitor':<42} {'best s':>7} {'median s':>9} {'ratio':>6} {'cpu s':>7} {'cpu ratio':>10}"
        print(header + "  (ratios: median per-repeat ratio to scan)")
        for name, values in times.items():
            ratio, cpu_ratio = median_ratio(values, scan), median_ratio(cpu[name], cpu[next(iter(cpu))])
            cpu_median = statistics.median(cpu[name])
            print(
                f"{name:<42} {min(values):>7.3f} {statistics.median(values):>9.3f} {ratio:>6.2f} "
                f"{cpu_median:>7.3f} {cpu_ratio:>10.2f}"
            )
        median = statistics.median(moments)
        print(
            f"\nmoments / scan = {median_ratio(moments, scan):.2f} (target <= 4); median {median:.2f} s (target <= 2)"
        )
        print(f"samples add {statistics.median(samples):.2f} s (target <= 2)")
        print(f"floor / scan = {median_ratio(floor, scan):.2f}: per-user grouping and feedback join, no metric summed")
        print(f"rollup vs raw moments: largest relative difference {largest_difference(db):.1e} (summation order)")
        print(f"load average before / after: {load} / {os.getloadavg()}")
        con.close()


if __name__ == "__main__":
    main()
