"""Real LoRA adapters with random weights, for tests and benchmarks that need a challenger to serve.

Random, not zero (peft's default initialisation makes the update zero), so that an adapter's
answers differ from the base model's and from another seed's.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from feedback.model.runtime import ModelRuntime

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")  # the refresh's default target modules


def random_lora(
    model_dir: Path, out_dir: Path, seed: int, *, rank: int = 8, alpha: int = 16, modules: Sequence[str] = ATTENTION
) -> Path:
    """Save a LoRA adapter on ``model_dir``'s model with weights drawn from ``seed`` into ``out_dir``."""
    torch.manual_seed(seed)
    runtime = ModelRuntime.load(model_dir)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(modules), init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        get_peft_model(runtime.model, config).save_pretrained(str(out_dir))
    return out_dir
