"""The float32 reference of the GPU tests: teacher-forced log-probabilities with the transformers runtime."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from peft import PeftModel

from feedback.model.runtime import ModelRuntime
from feedback.registry import AdapterRegistry

Score = Callable[[str | None, Sequence[int], Sequence[int]], tuple[float, ...]]
"""The reference log-probabilities: (adapter or None, prompt ids, completion ids) -> one per completion token."""


def scorer(model_dir: Path, registry: AdapterRegistry) -> Score:
    """Teacher-forced float32 log-probabilities on the GPU, a runtime per adapter (or None: the base model)."""
    runtimes: dict[str | None, ModelRuntime] = {}

    def runtime_for(adapter: str | None) -> ModelRuntime:
        if adapter not in runtimes:
            runtime = ModelRuntime.load(model_dir, device="cuda", dtype="float32")
            if adapter is not None:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                    # peft wraps the runtime's own model in place: its forward passes apply the adapter
                    PeftModel.from_pretrained(
                        runtime.model, registry.fetch(adapter), autocast_adapter_dtype=False
                    ).eval()
            runtimes[adapter] = runtime
        return runtimes[adapter]

    def score(adapter: str | None, prompt: Sequence[int], completion: Sequence[int]) -> tuple[float, ...]:
        return runtime_for(adapter).score_tokens(prompt, completion)

    return score
