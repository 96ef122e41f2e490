"""The offensive-language classifier's own features and probabilities equal the package's ``transform`` and
``predict_proba``."""

from __future__ import annotations

from test_content_corpus import labelled

from feedback.content import OffensiveLanguageClassifier
from feedback.content.classifier import _load


def test_the_probabilities_equal_the_packaged_models_predict_proba() -> None:
    # and two texts without a word of the vocabulary: the features are zero, the decision its intercept
    texts = [text for _, text in labelled("sensitive.tsv") + labelled("benign.tsv")] + ["", "it is the of and"]
    vectorizer, model = _load()
    expected = model.predict_proba(vectorizer.transform(texts))[:, 1]
    got = OffensiveLanguageClassifier(0.99).probabilities(texts)
    assert len(got) == len(texts) == 1092
    assert max(abs(g - e) for g, e in zip(got, expected, strict=True)) < 1e-12
    assert sum(g >= 0.99 for g in got) == sum(e >= 0.99 for e in expected)
