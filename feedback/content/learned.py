"""The learned filter: the first layers of the default model, fine-tuned as a classifier.

Features are the mean, over a text's tokens, of SmolLM2-135M-Instruct's hidden state after its
first ``layer`` decoder layers (the weights file names the layer), with LoRA adapters on every
projection of those layers merged into their weights at load. A standardised logistic head turns
the features into a probability. Only those layers are loaded and run, from the model directory
the model cache already holds, so nothing is fetched. The adapters (their ``A`` and ``B`` factors)
and the head ship in ``learned.npz`` (about 5 MB); they were trained on the development corpora
only, by ``tests/feedback/content/fit_learned.py`` (which reproduces them). The file also keeps
the features of a probe sentence: a model directory whose features differ (another model, other
weights) is refused at load.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import LlamaConfig, LlamaModel

from feedback.content.verdict import ContentVerdict
from feedback.errors import ContentFilterError

CATEGORY = "learned"
SHIPPED_WEIGHTS = Path(__file__).with_name("learned.npz")
PROBE = "The quick brown fox jumps over the lazy dog."  # its features are kept with the weights
PROBE_TOLERANCE = 1e-3  # largest difference from the kept probe features that still loads
MAX_TOKENS = 512  # a longer text is judged on its first and last 256 tokens
BATCH = 16  # texts per forward pass when several are judged at once
# fewer tokens are not judged (score 0): 99% of the dev lines it was fitted on have at least 5, and on one- or
# two-token texts ("OK", "No.", "Paris.") the mean is mostly the first token's state and scores near 1
MIN_TOKENS = 5

Vector = NDArray[np.float64]


class HiddenStateFeatures:
    """Mean-pooled hidden states of the first ``layer`` decoder layers of a Llama-family model."""

    def __init__(self, model_dir: Path, layer: int, adapters: Adapters | None = None) -> None:
        """``adapters``: LoRA factors to merge into the loaded layers' weights (none: the model as it is)."""
        try:
            self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            config = LlamaConfig(**json.loads((model_dir / "config.json").read_text(encoding="utf-8")))
            config.num_hidden_layers = layer
            self._model: Any = cast(Any, LlamaModel(config)).eval()
            self._model.norm = torch.nn.Identity()  # the hidden state itself, not the final norm of the last layer
            weights = _layers(model_dir / "model.safetensors", layer)
            if adapters is not None:
                adapters.merge_into(weights)
            self._model.load_state_dict(weights)
        except Exception as exc:  # tokenizers, safetensors and torch each raise errors of their own
            raise ContentFilterError(f"the learned classifier's model {str(model_dir)!r} cannot load: {exc}") from exc
        self.layer = layer

    @property
    def model(self) -> Any:
        """The loaded layers (a ``LlamaModel`` without its final norm): ``fit_learned.py`` trains adapters on them."""
        return self._model

    def __call__(self, texts: Sequence[str]) -> NDArray[np.float64]:
        """One row of features per text; texts of similar length run together, padded on the right.

        The attention is causal, so padding after a text's last token changes none of its hidden
        states: a text's features are the same alone or in a batch (to float rounding).
        """
        ids = [self.ids(text) for text in texts]
        rows = np.zeros((len(ids), self._model.config.hidden_size))
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), BATCH):
            batch = order[start : start + BATCH]
            with torch.inference_mode():
                rows[batch] = mean_pooled(self._model, [ids[i] for i in batch]).double().numpy()
        return rows

    def judged(self, text: str) -> bool:
        """Whether ``text`` is long enough to judge (MIN_TOKENS tokens or more)."""
        return len(self._tokenizer.encode(text).ids) >= MIN_TOKENS

    def ids(self, text: str, limit: int = MAX_TOKENS) -> list[int]:
        """The text's token ids; a text longer than ``limit`` keeps its first and last ``limit // 2``."""
        ids: list[int] = self._tokenizer.encode(text).ids or [0]  # [0]: the end-of-text token stands for ""
        if len(ids) > limit:
            ids = ids[: limit // 2] + ids[-limit // 2 :]
        return ids


def mean_pooled(model: Any, batch: Sequence[Sequence[int]]) -> torch.Tensor:
    """Each text's mean hidden state over its own tokens, the texts padded on the right in one forward pass.

    The attention is causal, so padding after a text's last token changes none of its hidden states.
    """
    width = max(len(ids) for ids in batch)
    padded = torch.tensor([[*ids, *[0] * (width - len(ids))] for ids in batch])
    mask = torch.tensor([[1.0] * len(ids) + [0.0] * (width - len(ids)) for ids in batch])
    hidden: torch.Tensor = model(input_ids=padded).last_hidden_state
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def _layers(weights: Path, layer: int) -> dict[str, torch.Tensor]:
    """The embedding and the first ``layer`` decoder layers of a causal LM's safetensors file."""
    keep = ("embed_tokens.", *(f"layers.{i}." for i in range(layer)))
    with safe_open(str(weights), framework="pt") as file:
        stored: list[str] = file.keys()
        names = [name for name in stored if name.removeprefix("model.").startswith(keep)]
        return {name.removeprefix("model."): file.get_tensor(name).float() for name in names}


@dataclass(frozen=True)
class Adapters:
    """LoRA factors of linear layers: ``weight += scaling * B @ A`` for each named module."""

    scaling: float
    factors: dict[str, tuple[NDArray[np.float32], NDArray[np.float32]]]  # module name -> (A, B)

    def merge_into(self, weights: dict[str, torch.Tensor]) -> None:
        """Add each module's product to its ``.weight`` in ``weights`` (a missing module is a KeyError)."""
        for name, (a, b) in self.factors.items():
            weights[f"{name}.weight"] += self.scaling * (torch.from_numpy(b) @ torch.from_numpy(a))


@dataclass(frozen=True)
class LogisticModel:
    """A standardised logistic head over the features of the first ``layer`` layers (with ``adapters``
    merged into them), kept in an ``.npz`` file."""

    layer: int
    mean: Vector
    scale: Vector
    coef: Vector
    intercept: float
    probe: Vector
    adapters: Adapters | None = None

    def probabilities(self, features: NDArray[np.float64]) -> list[float]:
        """The probability that each row's text is sensitive."""
        logits = ((features - self.mean) / self.scale) @ self.coef + self.intercept
        return [1.0 / (1.0 + math.exp(-float(z))) for z in logits]

    def save(self, path: Path) -> None:
        """Write the model (float64, so a refit reproduces the file exactly)."""
        arrays: dict[str, Any] = {
            "layer": np.array(self.layer),
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": np.array(self.intercept),
            "probe": self.probe,
        }
        if self.adapters is not None:
            arrays["lora_scaling"] = np.array(self.adapters.scaling)
            for name, (a, b) in self.adapters.factors.items():
                arrays[f"lora_A:{name}"], arrays[f"lora_B:{name}"] = a, b
        with path.open("wb") as file:
            np.savez(file, **arrays)

    @classmethod
    def read(cls, path: Path) -> LogisticModel:
        """The model in ``path``.

        Raises:
            ContentFilterError: the file is missing or not such a model.
        """
        try:
            with np.load(path) as data:
                adapters = None
                if "lora_scaling" in data:
                    names = sorted(key.removeprefix("lora_A:") for key in data.files if key.startswith("lora_A:"))
                    factors = {
                        n: (data[f"lora_A:{n}"].astype(np.float32), data[f"lora_B:{n}"].astype(np.float32))
                        for n in names
                    }
                    adapters = Adapters(float(data["lora_scaling"]), factors)
                return cls(
                    layer=int(data["layer"]),
                    mean=data["mean"].astype(np.float64),
                    scale=data["scale"].astype(np.float64),
                    coef=data["coef"].astype(np.float64),
                    intercept=float(data["intercept"]),
                    probe=data["probe"].astype(np.float64),
                    adapters=adapters,
                )
        except (OSError, ValueError, KeyError) as exc:
            raise ContentFilterError(f"the learned classifier's weights {str(path)!r} cannot be read: {exc}") from exc


class LearnedClassifier:
    """Blocks a text whose probability of being sensitive is at least ``threshold``."""

    def __init__(self, model_dir: Path, threshold: float, weights: Path = SHIPPED_WEIGHTS) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self.model = LogisticModel.read(weights)
        self.features = HiddenStateFeatures(model_dir, self.model.layer, self.model.adapters)
        [probe] = self.features([PROBE])
        if probe.shape != self.model.probe.shape or np.abs(probe - self.model.probe).max() > PROBE_TOLERANCE:
            raise ContentFilterError(
                f"the model in {str(model_dir)!r} is not the one the learned classifier was fitted on "
                "(its features of the probe sentence differ)"
            )

    def probabilities(self, texts: Sequence[str]) -> list[float]:
        """The probability that each text is sensitive; 0.0 for one of fewer than MIN_TOKENS tokens (not judged)."""
        judged = [i for i, text in enumerate(texts) if self.features.judged(text)]
        scores = [0.0] * len(texts)
        for i, score in zip(judged, self.model.probabilities(self.features([texts[i] for i in judged])), strict=True):
            scores[i] = score
        return scores

    def check(self, text: str) -> ContentVerdict:
        """Blocked at or above the threshold; the score is the probability either way."""
        [score] = self.probabilities([text])
        if score >= self.threshold:
            return ContentVerdict(True, CATEGORY, score, (f"classifier:{CATEGORY}",))
        return ContentVerdict(False, score=score)
