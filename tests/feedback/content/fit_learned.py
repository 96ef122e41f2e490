"""Train the learned content classifier on the development corpora and write ``feedback/content/learned.npz``.

Reads ``corpus/dev_*.tsv`` and ``corpus/dev5_*.tsv`` only: the test split and the round-4 batch
are never read here. A stratified fifth of ``dev_*`` (seed 0) is held back as validation; the
rest of ``dev_*`` and all of ``dev5_*`` are trained on. The model (:mod:`feedback.content.learned`):

1. the first ``LAYER`` decoder layers of the default model, mean-pooled; a standardiser and a
   logistic regression (scikit-learn, ``C``, balanced) fitted on the frozen features of the
   training lines start the head (a linear probe);
2. then LoRA adapters (peft; rank ``RANK`` on every projection of those layers) and the head train
   together for ``EPOCHS`` epochs: AdamW, class-weighted binary cross-entropy, batches of similar
   length, a short warm-up and a linear decay;
3. the threshold is the lowest that blocks at most ``MAX_VALIDATION_FALSE_BLOCKS`` of the
   validation benign lines, scored as the gateway scores them (adapters merged).

Printed: the validation recall and false blocks. Deterministic on one torch thread: the same
corpora, model and library versions give the same weights, to float rounding
(``test_content_learned.py`` retrains and compares).

    .venv/bin/python tests/feedback/content/fit_learned.py   # train, write the weights, print the threshold
"""

from __future__ import annotations

import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from peft import LoraConfig, get_peft_model
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from feedback.content.learned import (
    PROBE,
    SHIPPED_WEIGHTS,
    Adapters,
    HiddenStateFeatures,
    LearnedClassifier,
    LogisticModel,
    mean_pooled,
)
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.settings import ModelSettings

CORPUS = Path(__file__).with_name("corpus")
LAYER = 8  # as good as all 30 on the validation lines, and 4x cheaper to run (see the README)
C = 0.003  # the probe's inverse L2 strength (the frozen classifier's choice by 5-fold dev CV)
RANK, ALPHA, DROPOUT = 16, 32, 0.05
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EPOCHS = 2  # the best validation recall at one false block of 1 to 4 epochs
BATCH = 16
LR_ADAPTERS, LR_HEAD, WEIGHT_DECAY, WARM_UP = 3e-4, 1e-3, 0.01, 0.06
MAX_TRAIN_TOKENS = 128  # a longer training line keeps its first and last 64 tokens
VALIDATION = 0.2
SEED = 0
MAX_VALIDATION_FALSE_BLOCKS = 1  # of the 227 validation benign lines


@dataclass(frozen=True)
class Lines:
    texts: list[str]
    labels: NDArray[np.int64]  # 1 sensitive
    strata: list[str]  # the sensitive category, or "benign"


def corpus(prefix: str) -> Lines:
    """The ``{prefix}_sensitive.tsv`` and ``{prefix}_benign.tsv`` lines."""
    texts, labels, strata = [], [], []
    for name, label in ((f"{prefix}_sensitive.tsv", 1), (f"{prefix}_benign.tsv", 0)):
        for line in (CORPUS / name).read_text(encoding="utf-8").splitlines():
            if line and not line.startswith("#"):
                kind, text = line.split("\t", 1)
                texts.append(text)
                labels.append(label)
                strata.append(kind if label else "benign")
    return Lines(texts, np.array(labels), strata)


def pick(lines: Lines, rows: NDArray[np.int64]) -> Lines:
    return Lines([lines.texts[i] for i in rows], lines.labels[rows], [lines.strata[i] for i in rows])


def dev_split() -> tuple[Lines, Lines]:
    """(training lines, validation lines): a stratified fifth of ``dev_*`` validates; the rest and ``dev5_*`` train."""
    dev, dev5 = corpus("dev"), corpus("dev5")
    train, held = train_test_split(
        np.arange(len(dev.texts)), test_size=VALIDATION, stratify=dev.strata, random_state=SEED
    )
    rest = pick(dev, np.sort(train))
    training = Lines(rest.texts + dev5.texts, np.concatenate([rest.labels, dev5.labels]), rest.strata + dev5.strata)
    return training, pick(dev, np.sort(held))


class Classifier(nn.Module):
    """The features of :class:`HiddenStateFeatures` with LoRA adapters, and a standardised linear head."""

    def __init__(self, model_dir: Path) -> None:
        super().__init__()
        self.frozen = HiddenStateFeatures(model_dir, LAYER)
        for parameter in self.frozen.model.parameters():
            parameter.requires_grad_(False)
        config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules=list(MODULES), bias="none")
        self.body = get_peft_model(self.frozen.model, config)
        size = self.frozen.model.config.hidden_size
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("scale", torch.ones(size))
        self.head = nn.Linear(size, 1)

    def ids(self, text: str) -> list[int]:
        return self.frozen.ids(text, MAX_TRAIN_TOKENS)

    def pooled(self, batch: list[list[int]]) -> torch.Tensor:
        return mean_pooled(self.body, batch)

    def forward(self, batch: list[list[int]]) -> torch.Tensor:
        return self.head((self.pooled(batch) - self.mean) / self.scale).squeeze(-1)

    def start_head(self, ids: list[list[int]], labels: NDArray[np.int64]) -> None:
        """The head starts as the linear probe of the frozen features."""
        with torch.inference_mode(), self.body.disable_adapter():
            features = np.concatenate([self.pooled(ids[i : i + 32]).double().numpy() for i in range(0, len(ids), 32)])
        scaler = StandardScaler().fit(features)
        probe = LogisticRegression(C=C, class_weight="balanced", max_iter=5000).fit(scaler.transform(features), labels)
        self.mean.copy_(torch.tensor(scaler.mean_, dtype=torch.float32))
        self.scale.copy_(torch.tensor(scaler.scale_, dtype=torch.float32))
        self.head.weight.data.copy_(torch.tensor(probe.coef_, dtype=torch.float32))
        self.head.bias.data.fill_(float(probe.intercept_[0]))

    def export(self, probe: NDArray[np.float64]) -> LogisticModel:
        factors = {}
        for name, module in self.body.named_modules():
            if name.endswith(MODULES) and hasattr(module, "lora_A"):
                a = module.lora_A["default"].weight.detach().numpy().astype(np.float32)
                b = module.lora_B["default"].weight.detach().numpy().astype(np.float32)
                factors[name.removeprefix("base_model.model.")] = (a, b)
        return LogisticModel(
            layer=LAYER,
            mean=self.mean.double().numpy(),
            scale=self.scale.double().numpy(),
            coef=self.head.weight.detach()[0].double().numpy(),
            intercept=float(self.head.bias.detach()[0]),
            probe=probe,
            adapters=Adapters(ALPHA / RANK, factors),
        )


def train(model_dir: Path, training: Lines, progress: bool = True) -> Classifier:
    """The classifier trained on ``training`` (seeded: the same lines give the same weights)."""
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    model = Classifier(model_dir)
    ids = [model.ids(text) for text in training.texts]
    model.start_head(ids, training.labels)
    adapters = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    optimiser = torch.optim.AdamW(
        [{"params": adapters, "lr": LR_ADAPTERS}, {"params": list(model.head.parameters()), "lr": LR_HEAD}],
        weight_decay=WEIGHT_DECAY,
    )
    labels = training.labels
    loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float((labels == 0).sum()) / float(labels.sum())))
    steps = math.ceil(len(ids) / BATCH) * EPOCHS
    warm = max(1, int(WARM_UP * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / max(1, steps - warm))
    )
    rng = np.random.default_rng(SEED)
    trainable = adapters + list(model.head.parameters())
    for epoch in range(1, EPOCHS + 1):
        model.train()
        order = list(np.argsort(np.array([len(x) for x in ids]) + rng.uniform(0, 3, len(ids))))
        batches = [order[s : s + BATCH] for s in range(0, len(order), BATCH)]
        rng.shuffle(batches)  # type: ignore[arg-type]
        total = 0.0
        for rows in batches:
            value = loss(model([ids[i] for i in rows]), torch.tensor(labels[rows], dtype=torch.float32))
            optimiser.zero_grad()
            value.backward()
            nn.utils.clip_grad_norm_(trainable, 1.0)
            optimiser.step()
            schedule.step()
            total += value.item()
        if progress:
            print(f"epoch {epoch}/{EPOCHS}: mean loss {total / len(batches):.4f}", flush=True)
    return model.eval()


def exported(model_dir: Path, model: Classifier) -> LogisticModel:
    """The trained classifier as the file holds it, with the probe's features of the merged model."""
    draft = model.export(np.zeros(1))
    [probe] = HiddenStateFeatures(model_dir, LAYER, draft.adapters)([PROBE])
    return model.export(probe)


def validation_scores(model_dir: Path, weights: LogisticModel, validation: Lines) -> NDArray[np.float64]:
    """The validation lines' probabilities as the gateway computes them (adapters merged, short texts 0)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "learned.npz"
        weights.save(path)
        return np.array(LearnedClassifier(model_dir, 0.5, weights=path).probabilities(validation.texts))


def threshold(scores: NDArray[np.float64], labels: NDArray[np.int64]) -> float:
    """The lowest threshold (to 4 decimals, rounded up) that blocks at most MAX_VALIDATION_FALSE_BLOCKS benign lines."""
    benign = np.sort(scores[labels == 0])[::-1]
    return float(np.ceil(benign[MAX_VALIDATION_FALSE_BLOCKS] * 10_000 + 1e-9) / 10_000)


def main() -> None:
    torch.set_num_threads(1)  # reproducible sums (the test retrains on one thread too)
    model_dir = prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir)
    training, validation = dev_split()
    print(
        f"training on {len(training.texts)} lines ({int(training.labels.sum())} sensitive), "
        f"validating on {len(validation.texts)} ({int(validation.labels.sum())} sensitive)"
    )
    weights = exported(model_dir, train(model_dir, training))
    scores = validation_scores(model_dir, weights, validation)
    cut = threshold(scores, validation.labels)
    caught = scores >= cut
    sensitive, benign = validation.labels == 1, validation.labels == 0
    print(
        f"threshold {cut:.4f}: validation recall {caught[sensitive].mean():.4f} "
        f"({int(caught[sensitive].sum())}/{int(sensitive.sum())}), "
        f"false blocks {int(caught[benign].sum())}/{int(benign.sum())}"
    )
    weights.save(SHIPPED_WEIGHTS)
    print(f"wrote {SHIPPED_WEIGHTS}")


if __name__ == "__main__":
    main()
