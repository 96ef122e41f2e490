"""Continue LoRA training of the champion on a curated dataset, resumable and deterministic.

:func:`train` runs one training job in this process, top to bottom: load the base model, put the
champion's adapter on it trainable (or a new LoRA when there is no champion adapter), tokenise the
dataset, then one loop of optimizer steps that writes a checkpoint every
``checkpoint_every`` steps (and every ``checkpoint_every_s`` seconds) and at the end, and finally
the adapter. :mod:`feedback.train_job` runs the same job in a subprocess at lower priority.

Tokenisation (shared with scoring and the gate): prompt ids are
:meth:`ModelRuntime.render_prompt` of the messages; completion ids are the tokenizer's ids of the
completion text, no special tokens, plus the end-of-turn id scoring appends. The loss is the mean
negative log-likelihood of the completion tokens of a batch; prompts and padding carry none.

Determinism: the seed fixes LoRA initialisation, dropout and the data order (each epoch's
permutation is drawn from ``seed + epoch``, so the examples of step *n* are known without replaying
steps 0..n-1). With the same data, settings, thread count and device the adapter bytes are
identical, and a run resumed from a checkpoint ends with the same bytes as one never interrupted.
That holds on CPU (tested); CUDA kernels may sum in a varying order, so on a GPU two runs can
differ in the last bits.

Precision: the forward and backward passes run under bf16 autocast where the hardware computes
bf16 natively (CUDA, or a CPU with AMX or AVX-512 BF16; ``precision = "auto"``), else in fp32.
The LoRA weights, their gradients and the optimizer state stay fp32 either way.

Attention: ``attention = "auto"`` trains with transformers' eager attention on CPU when every
example fits in :data:`EAGER_MAX_TOKENS` tokens, else with PyTorch's fused
``scaled_dot_product_attention``. On CPU the fused kernel's backward pass is slow for short
sequences; eager attention keeps each layer's attention weights for the backward pass, which is
small at these lengths and grows with the square of the length.

A new adapter takes rank, alpha, dropout and target modules from the settings; a continued
champion adapter keeps its own (its shapes are fixed), and the settings' optimizer, schedule,
batching and seed apply to both.

Errors: :class:`TrainingError` (bad dataset, unloadable parent adapter, checkpoint of another job).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import SafetensorError
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type hints

from feedback.distributed import join_group
from feedback.examples import tokenize_examples
from feedback.model.runtime import ModelRuntime, resolve_device, resolve_precision
from feedback.settings import TrainingSettings
from feedback.train_data import check_lengths, collate, completion_loss, read_dataset
from feedback.train_state import TrainingError as TrainingError  # re-exported: the error of this module's API
from feedback.train_state import TrainState, latest_checkpoint, restore, write_checkpoint

ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
RESULT_FILE = "result.json"
EAGER_MAX_TOKENS = 384  # attention "auto" trains with eager attention on CPU up to this many tokens an example


@dataclass(frozen=True)
class TrainingJob:
    """One training run: what to train on, from what, where to write, and how."""

    dataset: Path  # JSONL, one example a line (id, messages, completion, source)
    output_dir: Path  # checkpoints/, adapter/ and result.json are written here
    model_dir: Path  # the base model directory (feedback.model.source.prepare_model)
    parent_adapter: Path | None = None  # the champion's adapter directory; None starts a new LoRA
    settings: TrainingSettings = field(default_factory=TrainingSettings)

    def to_json(self) -> str:
        """The job as JSON, for the training subprocess."""
        return json.dumps(
            {
                "dataset": str(self.dataset),
                "output_dir": str(self.output_dir),
                "model_dir": str(self.model_dir),
                "parent_adapter": None if self.parent_adapter is None else str(self.parent_adapter),
                "settings": self.settings.model_dump(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> TrainingJob:
        """The job :meth:`to_json` wrote."""
        raw = json.loads(text)
        parent = raw["parent_adapter"]
        return cls(
            dataset=Path(raw["dataset"]),
            output_dir=Path(raw["output_dir"]),
            model_dir=Path(raw["model_dir"]),
            parent_adapter=None if parent is None else Path(parent),
            settings=TrainingSettings(**raw["settings"]),
        )


@dataclass(frozen=True)
class TrainingResult:
    """What a finished run produced and measured."""

    adapter_dir: Path  # the trained adapter (peft format), ready for the gate and the registry
    steps: int  # optimizer steps taken in all (resumed runs included)
    examples: int  # examples in the dataset
    tokens: int  # prompt and completion tokens the model read (padding excluded)
    completion_tokens: int  # tokens the loss was computed on
    loss_curve: tuple[float, ...]  # mean completion loss of each optimizer step, nats per token
    resumed_from_step: int  # the checkpoint's step this process started from (0: a fresh start)
    device: str  # where it trained: "cpu" or "cuda"
    threads: int  # torch intra-op threads of the training process
    niceness: int  # the training process's niceness
    seconds: float  # wall time of this process's part of the run
    precision: str = "fp32"  # "bf16" (autocast) or "fp32"
    attention: str = "sdpa"  # attention kernel: "eager" or "sdpa"
    processes: int = 1  # data-parallel processes that trained it together (feedback.distributed)

    def to_json(self) -> str:
        """The result as JSON (paths as strings)."""
        return json.dumps({**asdict(self), "adapter_dir": str(self.adapter_dir)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainingResult:
        """The result :meth:`to_json` wrote."""
        raw = json.loads(text)
        return cls(**{**raw, "adapter_dir": Path(raw["adapter_dir"]), "loss_curve": tuple(raw["loss_curve"])})


def train(job: TrainingJob, *, progress: bool = True) -> TrainingResult:
    """Run ``job`` in this process, resuming from its latest checkpoint; return the result.

    Raises:
        TrainingError: the dataset, the parent adapter or an existing checkpoint is unusable.
        ModelError: the base model cannot be loaded.
    """
    started = time.monotonic()
    settings = job.settings
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    raw_examples = read_dataset(job.dataset)  # before the model loads, so bad data fails fast
    group = join_group(device)  # one process, or this one's place among torchrun's (feedback.distributed)
    runtime = ModelRuntime.load(job.model_dir, device=group.device(device))
    examples = tokenize_examples(runtime, raw_examples)
    check_lengths(examples, runtime.context_length, job.dataset)
    longest = max(len(e.prompt_ids) + len(e.completion_ids) for e in examples)
    attention = resolve_attention(settings.attention, device, longest)
    runtime.model.set_attn_implementation(attention)
    torch.manual_seed(settings.seed)
    model = _lora_model(runtime, job)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    batches = settings.model_copy(update={"batch_size": settings.batch_size * group.world})  # global batches
    total = total_steps(len(examples), batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _LinearSchedule(warmup_steps(settings, total), total))
    state = TrainState(fingerprint=_fingerprint(job, group.world))
    checkpoints = job.output_dir / CHECKPOINTS_DIR
    latest = latest_checkpoint(checkpoints)
    if latest is not None:
        state = restore(latest, model, optimizer, scheduler, expected=state.fingerprint)
    resumed_from = state.step
    padding = runtime.pad_id
    model.train()
    trainer = group.wrap(model)  # averages gradients over the group's processes
    progress = progress and group.main
    bar = tqdm(total=total, initial=state.step, desc="training", unit="step", file=sys.stderr, disable=not progress)
    last_checkpoint = time.monotonic()
    with bar:
        while state.step < total:
            indices = group.share(batch_indices(state.step, len(examples), batches))
            batch = collate([examples[i] for i in indices], padding)
            with autocast(device, precision):
                loss_sum, n_tokens = completion_loss(trainer, batch)
            n_global, tokens_global = group.totals(n_tokens, batch.tokens)
            # Scaled so that the group's average gradient is the gradient of the global batch's mean loss.
            scaled = loss_sum * group.world / n_global
            local = _optimizer_step(params, optimizer, scheduler, scaled, settings.max_grad_norm)
            loss = group.totals(local)[0] / group.world
            state.advance(loss, int(tokens_global), int(n_global))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            due = state.step % settings.checkpoint_every == 0
            timely = time.monotonic() - last_checkpoint >= settings.checkpoint_every_s
            if group.main and (due or timely or state.step == total):
                write_checkpoint(checkpoints, model, optimizer, scheduler, state)
                last_checkpoint = time.monotonic()
    group.leave()
    adapter_dir = job.output_dir / ADAPTER_DIR
    if group.main:
        _save_adapter(model, adapter_dir, runtime.name)
    result = TrainingResult(
        adapter_dir=adapter_dir,
        steps=state.step,
        examples=len(examples),
        tokens=state.tokens,
        completion_tokens=state.completion_tokens,
        loss_curve=tuple(state.loss_curve),
        resumed_from_step=resumed_from,
        device=device,
        threads=torch.get_num_threads(),
        niceness=os.nice(0),
        seconds=time.monotonic() - started,
        precision=precision,
        attention=attention,
        processes=group.world,
    )
    if group.main:
        _write_atomically(job.output_dir / RESULT_FILE, result.to_json())
    return result


def resolve_attention(attention: str, device: str, longest: int) -> str:
    """``auto`` becomes ``eager`` on CPU when the longest example has at most :data:`EAGER_MAX_TOKENS` tokens."""
    if attention != "auto":
        return attention
    return "eager" if device == "cpu" and longest <= EAGER_MAX_TOKENS else "sdpa"


def autocast(device: str, precision: str) -> torch.autocast:
    """The autocast context of a training or scoring pass (a disabled one for fp32)."""
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")


def total_steps(n_examples: int, settings: TrainingSettings) -> int:
    """Optimizer steps of a run: every epoch's batches, capped by ``max_steps``."""
    steps = settings.epochs * math.ceil(n_examples / settings.batch_size)
    return steps if settings.max_steps is None else min(steps, settings.max_steps)


def warmup_steps(settings: TrainingSettings, total: int) -> int:
    """Warm-up steps of a run of ``total`` steps: ``warmup_steps`` or ``warmup_share`` of them (rounded up), if more."""
    return max(settings.warmup_steps, math.ceil(settings.warmup_share * total))


def batch_indices(step: int, n_examples: int, settings: TrainingSettings) -> list[int]:
    """The examples of optimizer step ``step``: a slice of its epoch's seeded permutation."""
    per_epoch = math.ceil(n_examples / settings.batch_size)
    epoch, within = divmod(step, per_epoch)
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(settings.seed + epoch))
    start = within * settings.batch_size
    return [int(i) for i in order[start : start + settings.batch_size]]


def _optimizer_step(
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss: torch.Tensor,
    max_grad_norm: float,
) -> float:
    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


class _LinearSchedule:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup = warmup
        self.total = total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


def _lora_model(runtime: ModelRuntime, job: TrainingJob) -> Any:
    settings = job.settings
    with warnings.catch_warnings():
        # peft asks transformers 5 for a deprecated alias; nothing for us to change.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if job.parent_adapter is None:
            config = LoraConfig(
                r=settings.rank,
                lora_alpha=settings.alpha,
                lora_dropout=settings.dropout,
                target_modules=list(settings.target_modules),
                task_type="CAUSAL_LM",
            )
            return get_peft_model(runtime.model, config)
        try:
            return PeftModel.from_pretrained(runtime.model, job.parent_adapter, is_trainable=True)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            raise TrainingError(f"could not load the parent adapter {str(job.parent_adapter)!r}: {exc}") from exc


def _save_adapter(model: Any, target: Path, base_name: str) -> Path:
    """Write the adapter (config and weights only) into ``target`` atomically; return ``target``."""
    # The base model's local path would make the adapter's bytes (and its registry hash) differ by machine.
    config = model.peft_config["default"]
    config.base_model_name_or_path = base_name
    # peft keeps target modules as a set, whose order (and so the saved JSON) changes with each process's hash seed.
    if isinstance(config.target_modules, set):
        config.target_modules = sorted(config.target_modules)
    staging = target.with_name(f".{target.name}-staging")
    shutil.rmtree(staging, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model.save_pretrained(staging, save_embedding_layers=False)
    (staging / "README.md").unlink(missing_ok=True)  # peft's model card template: not part of the adapter
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _fingerprint(job: TrainingJob, processes: int = 1) -> str:
    """SHA-256 of what decides the trained bytes, so a checkpoint is only resumed by the same job."""
    digest = hashlib.sha256()
    if processes > 1:  # each step's batch is ``processes`` times larger
        digest.update(f"processes={processes}".encode())
    digest.update(job.dataset.read_bytes())
    # the processes count as the run resolved them (``processes``), not as asked (0 is "one per GPU")
    skip = {"checkpoint_every", "checkpoint_every_s", "niceness", "restarts", "processes"}
    decisive = job.settings.model_dump(exclude=skip)
    digest.update(json.dumps(decisive, sort_keys=True).encode())
    digest.update(str(job.model_dir.resolve()).encode())
    if job.parent_adapter is not None:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            path = job.parent_adapter / name
            digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()
