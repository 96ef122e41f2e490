"""Domain relevance: TF-IDF cosine similarity to the centroid of a reference corpus (scikit-learn)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]

from feedback.curation.report import CurationError
from feedback.examples import Example
from feedback.settings import CurationSettings


def relevance_scores(texts: Sequence[str], reference: Sequence[str]) -> list[float]:
    """Cosine similarity of each text's TF-IDF vector to the centroid of the reference's vectors.

    Unigrams without English stop words, sublinear term frequency, smoothed idf learnt from the
    reference and the texts together (so words common everywhere weigh little).
    """
    if not texts:
        return []
    vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True)
    try:
        matrix = vectorizer.fit_transform([*reference, *texts])
    except ValueError:  # no word at all survives tokenisation: nothing is similar
        return [0.0] * len(texts)
    centroid = np.asarray(matrix[: len(reference)].mean(axis=0)).ravel()
    norm = float(np.linalg.norm(centroid))
    if norm == 0.0:
        return [0.0] * len(texts)
    scores = matrix[len(reference) :] @ (centroid / norm)
    return [float(s) for s in np.asarray(scores).ravel()]


def relevance_filter(
    examples: list[Example], reference: Sequence[Example], settings: CurationSettings
) -> tuple[list[Example], Counter[str]]:
    """Keep the ``relevance_keep_share`` of examples most similar to ``reference`` (input order kept)."""
    if not reference:
        raise CurationError("curation.relevance_enabled needs a non-empty reference corpus (curation.relevance_corpus)")
    scores = relevance_scores([e.text for e in examples], [e.text for e in reference])
    keep = math.ceil(settings.relevance_keep_share * len(examples))
    ranked = sorted(range(len(examples)), key=lambda i: (-scores[i], i))
    chosen = set(ranked[:keep])
    kept = [example for i, example in enumerate(examples) if i in chosen]
    return kept, Counter({"less_relevant": len(examples) - len(kept)})
