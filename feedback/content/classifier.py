"""The classifier filter: a linear model of offensive language that ships inside a PyPI package.

``alt-profanity-check`` carries a scikit-learn TF-IDF vectorizer and a calibrated linear SVM in its
wheel (trained on labelled offensive tweets; its version follows the scikit-learn version it was
trained with, so the lock pins both together and the model unpickles without warnings). Nothing is
fetched at run time. It recognises insults, slurs and profanity; threats, sexual requests, self-harm
and weapons questions in polite words are the term list's part (see ``feedback.content``).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from feedback.content.verdict import ContentVerdict
from feedback.errors import ContentFilterError

CATEGORY = "offensive"


class OffensiveLanguageClassifier:
    """Blocks a text whose probability of being offensive is at least ``threshold``."""

    def __init__(self, threshold: float) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self._vectorizer, self._model = _load()

    def probabilities(self, texts: list[str]) -> list[float]:
        """The probability that each text is offensive."""
        scores = self._model.predict_proba(self._vectorizer.transform(texts))[:, 1]
        return [float(s) for s in scores]

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
    return module.vectorizer, module.model
