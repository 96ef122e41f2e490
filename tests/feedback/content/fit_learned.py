"""Fit the learned content classifier on the DEV split and write ``feedback/content/learned.npz``.

Reads ``corpus/dev_sensitive.tsv`` and ``corpus/dev_benign.tsv`` only: the test split and the
round-4 batch are never read here. Features are those of :mod:`feedback.content.learned` (mean
hidden state after decoder layer ``LAYER`` of the default model); the model is scikit-learn's
``LogisticRegression`` on standardised features. Deterministic: the same corpus, model and library
versions give the same file (``test_content_learned.py`` refits and compares).

    .venv/bin/python tests/feedback/content/fit_learned.py        # refit and write the weights
    .venv/bin/python tests/feedback/content/fit_learned.py --cv   # the cross-validation that chose them
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from feedback.content import build_filter
from feedback.content.learned import PROBE, SHIPPED_WEIGHTS, HiddenStateFeatures, LogisticModel
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.settings import ContentFilterSettings, ModelSettings

CORPUS = Path(__file__).with_name("corpus")
# hidden state after decoder layer 8 of 30: the best dev-CV recall among the static embeddings (layer 0), layers
# 4, 8, 12, 16, 20, 24, 4+8+12 together, and a prompted last-token state (see the README)
LAYER = 8
C = 0.003  # inverse L2 strength: the best dev-CV recall of C_GRID at MAX_DEV_FALSE_BLOCKS
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)  # what --cv compares
FOLDS = 5  # stratified by category (sensitive) and "benign"
SEED = 0  # the folds' shuffle
# dev benign lines the classifier alone may block out of fold (1/1132); with the 2 the rest of the filter blocks,
# the combined dev false-block rate is at most 3/1132 = 0.27%, well under the 0.5% target
MAX_DEV_FALSE_BLOCKS = 1

Matrix = NDArray[np.float64]


def dev_split() -> tuple[list[str], NDArray[np.int64], list[str]]:
    """Texts, labels (1 sensitive) and strata (the sensitive category, or "benign") of the dev split."""
    texts, labels, strata = [], [], []
    for name, label in (("dev_sensitive.tsv", 1), ("dev_benign.tsv", 0)):
        for line in (CORPUS / name).read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#"):
                kind, text = line.split("\t", 1)
                texts.append(text)
                labels.append(label)
                strata.append(kind if label else "benign")
    return texts, np.array(labels), strata


def fit(features: Matrix, labels: NDArray[np.int64], c: float, probe: Matrix) -> LogisticModel:
    """Standardise, then an L2 logistic regression with balanced class weights."""
    scaler = StandardScaler().fit(features)
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    model.fit(scaler.transform(features), labels)
    return LogisticModel(
        layer=LAYER,
        mean=scaler.mean_.astype(np.float64),
        scale=scaler.scale_.astype(np.float64),
        coef=model.coef_[0].astype(np.float64),
        intercept=float(model.intercept_[0]),
        probe=probe[0],
    )


def out_of_fold(features: Matrix, labels: NDArray[np.int64], strata: list[str], c: float) -> NDArray[np.float64]:
    """Each dev line's probability from the model fitted on the other folds."""
    scores = np.zeros(len(labels))
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(features, strata)
    for train, held in folds:
        model = fit(features[train], labels[train], c, features[:1])
        scores[held] = model.probabilities(features[held])
    return scores


def threshold(scores: NDArray[np.float64], labels: NDArray[np.int64]) -> float:
    """The lowest threshold (to 3 decimals, rounded up) that blocks at most MAX_DEV_FALSE_BLOCKS benign lines."""
    benign = np.sort(scores[labels == 0])[::-1]
    return float(np.ceil(benign[MAX_DEV_FALSE_BLOCKS] * 1000 + 1e-9) / 1000)


def cross_validate(features: Matrix, labels: NDArray[np.int64], strata: list[str], others: NDArray[np.bool_]) -> None:
    """Print, per C, the out-of-fold threshold, recall (overall, per category) and false blocks.

    ``others``: what the rest of the shipped filter (term list, offensive-language model) blocks; the
    combined numbers are fitted (the term list was tuned on this split), the classifier's are not.
    """
    categories = sorted(set(strata) - {"benign"})
    sensitive, benign = labels == 1, labels == 0
    for c in C_GRID:
        scores = out_of_fold(features, labels, strata, c)
        cut = threshold(scores, labels)
        caught = scores >= cut
        combined = caught | others
        per = ", ".join(f"{s} {caught[np.array(strata) == s].mean():.3f}" for s in categories)
        print(
            f"C={c}: threshold {cut:.3f}; classifier alone: recall {caught[sensitive].mean():.4f} "
            f"({int(caught[sensitive].sum())}/{int(sensitive.sum())}: {per}), "
            f"false blocks {int(caught[benign].sum())}/{int(benign.sum())}; "
            f"combined: recall {combined[sensitive].mean():.4f}, false blocks {int(combined[benign].sum())}"
        )


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)  # short forward passes: a second thread only waits on a busy machine
    texts, labels, strata = dev_split()
    extract = HiddenStateFeatures(prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir), LAYER)
    features, probe = extract(texts), extract([PROBE])
    if "--cv" in argv:
        rest = build_filter(ContentFilterSettings(learned=False))
        cross_validate(features, labels, strata, np.array([rest.check(text).blocked for text in texts]))
        return
    fit(features, labels, C, probe).save(SHIPPED_WEIGHTS)
    print(f"wrote {SHIPPED_WEIGHTS} from {len(texts)} dev lines")


if __name__ == "__main__":
    main(sys.argv[1:])
