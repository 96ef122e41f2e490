"""The classifier filter: a linear model of offensive language that ships inside a PyPI package.

``alt-profanity-check`` carries a scikit-learn TF-IDF vectorizer and a calibrated linear SVM in its
wheel (trained on labelled offensive tweets; its version follows the scikit-learn version it was
trained with, so the lock pins both together and the model unpickles without warnings). Nothing is
fetched at run time. The model is a ``CalibratedClassifierCV`` of linear SVMs with sigmoid calibration;
scikit-learn's ``predict_proba`` validates its input for milliseconds on every call, so the check
computes the same probability from the fitted weights directly (the mean over the folds of
``1 / (1 + exp(a * (w . x + c) + b))``), about 8 times faster and equal to ``predict_proba``. Likewise
the TF-IDF features ``x``: the vectorizer's own analyzer splits the text, and the counts of the words
in its vocabulary, times their idf, scaled to unit length, are what ``transform`` gives, without the
sparse matrix it builds and checks on every call.

It recognises insults, slurs and profanity; threats, sexual requests, self-harm and weapons
questions in polite words are the term list's part (see ``feedback.content``).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import numpy as np

from feedback.content.verdict import ContentVerdict
from feedback.errors import ContentFilterError

CATEGORY = "offensive"


class OffensiveLanguageClassifier:
    """Blocks a text whose probability of being offensive is at least ``threshold``."""

    def __init__(self, threshold: float) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        vectorizer, model = _load()
        self._analyze = vectorizer.build_analyzer()  # lower-casing, the token pattern, the stop words
        self._vocabulary: dict[str, int] = vectorizer.vocabulary_
        self._idf = vectorizer.idf_
        folds = model.calibrated_classifiers_
        self._weights = np.stack([fold.estimator.coef_.ravel() for fold in folds], axis=1)  # features x folds
        self._intercepts = np.array([fold.estimator.intercept_[0] for fold in folds])
        self._a = np.array([fold.calibrators[0].a_ for fold in folds])
        self._b = np.array([fold.calibrators[0].b_ for fold in folds])

    def probabilities(self, texts: list[str]) -> list[float]:
        """The probability that each text is offensive (what the package's ``predict_proba`` gives)."""
        decisions = np.stack([self._decisions(text) for text in texts]) if texts else np.zeros((0, len(self._a)))
        return self._calibrated(decisions)

    def _calibrated(self, decisions: Any) -> list[float]:
        """The probability of each row of per-fold decisions: the folds' sigmoid calibrations, averaged."""
        scores = (1.0 / (1.0 + np.exp(self._a * decisions + self._b))).mean(axis=1)
        return [float(s) for s in scores]

    def _decisions(self, text: str) -> np.ndarray:
        """Each fold's ``w . x + c`` for the text's TF-IDF features ``x`` (unit length, as ``transform`` makes)."""
        counts: dict[int, int] = {}
        for word in self._analyze(text):
            column = self._vocabulary.get(word)
            if column is not None:
                counts[column] = counts.get(column, 0) + 1
        if not counts:
            return np.asarray(self._intercepts)
        columns = np.fromiter(counts, dtype=np.intp, count=len(counts))
        features = np.fromiter(counts.values(), dtype=np.float64, count=len(counts)) * self._idf[columns]
        features /= np.sqrt(features @ features)
        return np.asarray(features @ self._weights[columns] + self._intercepts)

    def check(self, text: str) -> ContentVerdict:
        """Blocked at or above the threshold; the score is the probability either way."""
        [score] = self.probabilities([text])
        if score >= self.threshold:
            return ContentVerdict(True, CATEGORY, score, (f"classifier:{CATEGORY}",))
        return ContentVerdict(False, score=score)


def _load() -> tuple[Any, Any]:
    """The package's vectorizer and model; any warning while unpickling is an error (a version skew)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            module = importlib.import_module("profanity_check.profanity_check")
    except Exception as exc:  # an import error, or an unpickling warning turned into an error
        raise ContentFilterError(f"the offensive-language classifier cannot load: {exc}") from exc
    model = module.model
    folds = getattr(model, "calibrated_classifiers_", None)
    if getattr(model, "method", None) != "sigmoid" or not folds or len(model.classes_) != 2:
        raise ContentFilterError(
            "the offensive-language classifier is not the sigmoid-calibrated binary model expected"
        )
    return module.vectorizer, model
