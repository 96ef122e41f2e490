"""Training data: read the dataset, tokenise examples as scoring does, pad batches, compute the loss.

Prompt ids are :meth:`ModelRuntime.render_prompt` of the messages; completion ids are the
tokenizer's ids of the completion text (no special tokens) plus the end-of-turn id that
:meth:`ModelRuntime.score` appends. Batches are right-padded; the loss covers completion tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from feedback.examples import DatasetError, Example, TokenizedExample, read_examples
from feedback.train_state import TrainingError

IGNORE = -100  # target of positions that carry no loss (cross_entropy's ignore_index)


@dataclass(frozen=True)
class Batch:
    """Right-padded examples: ``targets[r, t]`` is the token position ``t`` must predict, or IGNORE."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    keep: int  # only the last ``keep`` positions predict a completion token (logits for them only)
    tokens: int  # non-padding tokens
    completion_tokens: int  # tokens that carry the loss


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> Batch:
    """Right-pad ``examples`` into one batch whose targets are the completion tokens only."""
    lengths = [len(e.prompt_ids) + len(e.completion_ids) for e in examples]
    width = max(lengths)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, (example, length) in enumerate(zip(examples, lengths, strict=True)):
        input_ids[row, :length] = torch.tensor([*example.prompt_ids, *example.completion_ids])
        attention_mask[row, :length] = 1
        # Position t predicts token t + 1: the completion is predicted from the prompt's last token on.
        start = len(example.prompt_ids) - 1
        targets[row, start : length - 1] = torch.tensor(example.completion_ids)
    keep = width - min(len(e.prompt_ids) for e in examples) + 1
    n_completion = sum(len(e.completion_ids) for e in examples)
    return Batch(input_ids, attention_mask, targets, keep=keep, tokens=sum(lengths), completion_tokens=n_completion)


def completion_loss(model: Any, batch: Batch) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the batch's completion tokens, and how many there are."""
    device = next(model.parameters()).device
    # Logits only for positions that predict a completion token: the LM head is a large share of the work.
    logits = model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        logits_to_keep=batch.keep,
    ).logits
    targets = batch.targets[:, -batch.keep :].to(device)
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((targets != IGNORE).sum())


def read_dataset(path: Path) -> list[Example]:
    """The dataset's examples (``feedback.examples``); a bad, unreadable or empty file is a TrainingError."""
    try:
        examples = read_examples(path)
    except DatasetError as exc:
        raise TrainingError(f"dataset {exc}") from exc
    if not examples:
        raise TrainingError(f"dataset {str(path)!r} holds no examples")
    empty = next((n for n, e in enumerate(examples, start=1) if not e.completion), None)
    if empty is not None:
        raise TrainingError(f"dataset {str(path)!r} example {empty}: the completion is empty")
    return examples


def check_lengths(examples: Sequence[TokenizedExample], context_length: int, path: Path) -> None:
    """Refuse an example longer than the model reads (curation's length filter should have dropped it)."""
    for number, example in enumerate(examples, start=1):
        length = len(example.prompt_ids) + len(example.completion_ids)
        if length > context_length:
            raise TrainingError(
                f"dataset {str(path)!r} example {number} has {length} tokens; the model reads at most {context_length}"
            )
