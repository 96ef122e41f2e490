"""Shadow pairs: paired t and Wilcoxon against scipy, agreement counts, ROUGE-L against Lin (2004)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from experiment_data import synthetic_rows
from scipy import stats

from evaluation import constants
from evaluation.shadow import analyse_shadow, paired_t
from evaluation.similarity import normalize, rouge_l
from feedback.store import DuckDBStore


def shadow_data() -> dict[str, list[Any]]:
    data = synthetic_rows(phase="shadow", units=150, shadow=True, lift=0.1, seed=13)
    for k in range(0, len(data["completion"]), 2):  # rows come as (served champion, shadow challenger)
        if k % 6 == 0:
            data["completion"][k + 1] = data["completion"][k]
        elif k % 6 == 2:
            data["completion"][k + 1] = data["completion"][k].upper() + "!"
    return data


def test_paired_tests_and_agreement_match_scipy(experiment_store: Callable[..., DuckDBStore]) -> None:
    data = shadow_data()
    result = analyse_shadow(experiment_store(data), "exp-1", sample=100_000)
    champion = {k: np.array(data[k][0::2], dtype=float) for k in ("latency_ms", "confidence")}
    challenger = {k: np.array(data[k][1::2], dtype=float) for k in ("latency_ms", "confidence")}
    assert result.pairs == len(champion["latency_ms"])
    tests = {t.metric: t for t in result.tests}
    for metric in ("latency_ms", "confidence"):
        reference = stats.ttest_rel(challenger[metric], champion[metric])
        assert tests[metric].t_p_value == pytest.approx(reference.pvalue, abs=1e-10)
        assert tests[metric].mean_diff == pytest.approx((challenger[metric] - champion[metric]).mean(), abs=1e-9)
        w = stats.wilcoxon(challenger[metric], champion[metric], method="approx", correction=False)
        assert tests[metric].wilcoxon_statistic == pytest.approx(w.statistic, abs=1e-9)
        assert tests[metric].wilcoxon_p_value == pytest.approx(w.pvalue, abs=1e-10)
    pairs = list(zip(data["completion"][0::2], data["completion"][1::2], strict=True))
    assert result.exact_match == pytest.approx(sum(a == b for a, b in pairs) / len(pairs), abs=1e-12)
    assert result.normalized_match == pytest.approx(
        sum(normalize(a) == normalize(b) for a, b in pairs) / len(pairs), abs=1e-12
    )
    assert result.mean_similarity == pytest.approx(np.mean([rouge_l(b, a) for a, b in pairs]), abs=1e-12)
    assert [d["rouge_l"] for d in result.disagreements] == sorted(rouge_l(b, a) for a, b in pairs)[:5]


def test_rouge_l_published_example() -> None:
    # Lin (2004), section 3: reference "police killed the gunman"
    assert rouge_l("police kill the gunman", "police killed the gunman") == 0.75
    assert rouge_l("the gunman kill police", "police killed the gunman") == 0.5
    assert rouge_l("", "") == 1.0
    assert rouge_l("a", "b") == 0.0
    assert normalize("  Hello,   World! ") == "hello world"


def test_no_pairs_and_degenerate() -> None:
    assert paired_t("latency_ms", 0, 0, 0, 0.05).error == constants.NO_PAIRS
    assert paired_t("latency_ms", 1, 3, 9, 0.05).error == constants.TOO_FEW_UNITS
    assert paired_t("latency_ms", 3, 3, 3, 0.05).error == constants.ZERO_VARIANCE


def test_shadow_without_pairs(experiment_store: Callable[..., DuckDBStore]) -> None:
    result = analyse_shadow(experiment_store(synthetic_rows(units=5)), "exp-1")
    assert result.pairs == 0
    assert all(t.error == constants.NO_PAIRS for t in result.tests)
