"""Training throughput: ``feedback.training.train`` against a bare peft loop on the same work.

Both sides load the default model, put the same new LoRA on it (same seed), run the same optimizer
steps on the same batches (right-padded, loss on completion tokens only) and save the adapter; the
bare loop is the textbook one (``model(..., labels=...).loss``, AdamW, no checkpoints), in the
same precision and with the same attention kernel as ours picks for the data. Ours also
checkpoints at the end, renders the progress bar off, and computes logits only where the loss needs
them. Tokens/s counts prompt and completion tokens (padding excluded), the same tokens on both sides.
One warm-up run each, then REPEATS runs alternating the two; prints the medians and their ratio
(target: ours / bare >= 0.9).

``BENCH_TRAINING_STEPS`` (default 8) and ``BENCH_TRAINING_REPEATS`` (default 3) scale it. Both sides
train on a CUDA GPU where one is visible (batches of 16 there), else on the CPU (batches of 4);
``BENCH_TRAINING_DEVICE=cpu`` keeps them on the CPU.

``python tests/bench/bench_training.py scaling`` measures weak scaling: the refresh's training
subprocess with one process and with one per GPU (two Gloo processes on a CPU), the same batch per
process, and prints the ratio of their tokens/s (target on two GPUs: >= 1.7).

``python tests/bench/bench_training.py variants`` instead measures ``feedback.training.train``
under the settings that decide its speed on CPU, side by side (batches of 8, 2 threads, the
refresh benchmark's shape): LoRA dropout 0.05 (the earlier default) against 0, and the fused
attention kernel (``sdpa``) against eager attention, each in the precision "auto" picks here.
It prints each variant's median tokens/s and its ratio to the earlier defaults.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from feedback.examples import tokenize_examples
from feedback.model.runtime import ModelRuntime, resolve_device, resolve_precision
from feedback.model.source import DEFAULT_MODEL, prepare_model
from feedback.settings import ModelSettings, TrainingSettings
from feedback.train_data import collate, read_dataset
from feedback.train_job import run_training
from feedback.training import TrainingJob, autocast, batch_indices, resolve_attention, train

STEPS = int(os.environ.get("BENCH_TRAINING_STEPS", "8"))
REPEATS = int(os.environ.get("BENCH_TRAINING_REPEATS", "3"))
DEVICE = resolve_device(os.environ.get("BENCH_TRAINING_DEVICE", "auto"))  # a CUDA GPU where there is one
# batches of 16 on a GPU: the 2-core CPU's batches of 4 would measure kernel launches there
SETTINGS = TrainingSettings.model_validate(
    {"rank": 8, "alpha": 16, "dropout": 0.0, "batch_size": 16 if DEVICE == "cuda" else 4, "max_steps": STEPS}
    | {"epochs": 100, "threads": 1, "device": DEVICE}
)
PRODUCTS = ["lamp", "chair", "desk", "mug", "sofa", "shelf", "rug", "clock"]


def write_dataset(path: Path, n: int = 32) -> Path:
    """Catalogue questions and answers of about 60 to 120 tokens each."""
    rows = []
    for i in range(n):
        item = PRODUCTS[i % len(PRODUCTS)]
        question = f"I am looking at the {item} number {i} in your catalogue. What does it cost and ship with?"
        answer = (
            f"The {item} number {i} costs {10 + 7 * i} dollars. "
            + "It ships with a manual and a warranty card. " * (1 + i % 4)
        )
        rows.append(
            {
                "id": f"b{i}",
                "messages": [{"role": "user", "content": question}],
                "completion": answer,
                "source": "confidence",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ours(model_dir: Path, dataset: Path, out: Path) -> tuple[float, int]:
    """Seconds and tokens of one ``feedback.training.train`` run."""
    start = time.perf_counter()
    result = train(TrainingJob(dataset, out, model_dir, settings=SETTINGS), progress=False)
    return time.perf_counter() - start, result.tokens


def bare(model_dir: Path, dataset: Path, out: Path) -> tuple[float, int]:
    """Seconds and tokens of the same work in a plain peft loop."""
    return bare_loop(model_dir, dataset, out, SETTINGS, STEPS)


def bare_loop(model_dir: Path, dataset: Path, out: Path, settings: TrainingSettings, steps: int) -> tuple[float, int]:
    """Seconds and tokens of ``steps`` textbook peft steps on ``dataset`` (new LoRA, AdamW, no checkpoints).

    The clock starts before the model loads, as the refresh's training time includes its load.
    """
    start = time.perf_counter()
    runtime = ModelRuntime.load(model_dir, device=DEVICE)
    examples = tokenize_examples(runtime, read_dataset(dataset))
    # the attention kernel ours picks for this data, so the ratio measures the loop and not the kernel
    longest = max(len(e.prompt_ids) + len(e.completion_ids) for e in examples)
    runtime.model.set_attn_implementation(resolve_attention(settings.attention, DEVICE, longest))
    torch.manual_seed(settings.seed)
    config = LoraConfig(  # the same adapter as ours: rank, alpha, dropout and target modules from ``settings``
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        model = get_peft_model(runtime.model, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    model.train()
    precision = resolve_precision(settings.precision, DEVICE)
    tokens = 0
    for step in range(steps):
        batch = collate([examples[i] for i in batch_indices(step, len(examples), settings)], runtime.pad_id)
        # labels in the transformers convention: the token itself, shifted inside the model
        labels = torch.full_like(batch.input_ids, -100)
        labels[:, 1:] = batch.targets[:, :-1]
        inputs = {"input_ids": batch.input_ids.to(DEVICE), "attention_mask": batch.attention_mask.to(DEVICE)}
        with autocast(DEVICE, precision):  # the precision the refresh trains in, so both do the same arithmetic
            loss = model(**inputs, labels=labels.to(DEVICE)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch.tokens
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        model.save_pretrained(out, save_embedding_layers=False)
    return time.perf_counter() - start, tokens


VARIANTS = {  # name: settings changed from the defaults
    "dropout 0.05, sdpa (earlier defaults)": {"dropout": 0.05, "attention": "sdpa"},
    "dropout 0, sdpa": {"dropout": 0.0, "attention": "sdpa"},
    "dropout 0.05, eager": {"dropout": 0.05, "attention": "eager"},
    "dropout 0, eager (defaults)": {"dropout": 0.0, "attention": "auto"},
}


def variants(model_dir: Path) -> None:
    """Tokens/s of ``train`` under each of :data:`VARIANTS`, alternating, and the ratio to the first."""
    base = TrainingSettings(batch_size=8, max_steps=STEPS, epochs=100, threads=2)
    torch.set_num_threads(base.threads)
    print(
        f"precision {resolve_precision(base.precision, 'cpu')}, batch {base.batch_size}, {STEPS} steps, "
        f"{REPEATS} repeats, {base.threads} threads"
    )
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = write_dataset(Path(tmp) / "data.jsonl", n=base.batch_size * STEPS)
        for repeat in range(REPEATS + 1):  # repeat 0 warms every variant up
            for n, (name, changes) in enumerate(VARIANTS.items()):
                settings = base.model_copy(update=changes)
                start = time.perf_counter()
                result = train(
                    TrainingJob(dataset, Path(tmp) / f"{n}-{repeat}", model_dir, settings=settings), progress=False
                )
                if repeat:
                    rates[name].append(result.tokens / (time.perf_counter() - start))
    first = statistics.median(next(iter(rates.values())))
    print(f"{'variant':<40} {'tokens/s':>9} {'/ earlier':>10}")
    for name, values in rates.items():
        print(f"{name:<40} {statistics.median(values):>9.1f} {statistics.median(values) / first:>10.2f}")


def scaling(model_dir: Path) -> None:
    """Weak scaling: tokens/s of the refresh's training subprocess with 1 and N processes at the same per-process batch.

    N is the visible GPUs (at least 2; on the CPU two Gloo processes of one thread each). Each side
    runs STEPS steps of its own global batches; tokens/s is the trainer's own count over its own
    wall time (model load included, as in a refresh). Target on 2 GPUs: >= 1.7.
    """
    n = max(2, torch.cuda.device_count())
    rates: dict[int, list[float]] = {1: [], n: []}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = write_dataset(Path(tmp) / "data.jsonl", n=SETTINGS.batch_size * n * 4)
        for repeat in range(REPEATS + 1):  # repeat 0 warms both up
            for processes in rates:
                settings = SETTINGS.model_copy(update={"processes": processes})
                job = TrainingJob(dataset, Path(tmp) / f"{processes}-{repeat}", model_dir, settings=settings)
                result = run_training(job, echo=None)
                if repeat:
                    rates[processes].append(result.tokens / result.seconds)
    one, many = (statistics.median(rates[p]) for p in (1, n))
    print(f"weak scaling on {DEVICE}, batch {SETTINGS.batch_size} per process, {STEPS} steps, {REPEATS} repeats")
    print(f"  1 process: {one:.1f} tokens/s; {n} processes: {many:.1f} tokens/s; ratio {many / one:.2f}")


def main() -> None:
    if sys.argv[1:] == ["variants"]:
        variants(prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir))
        return
    if sys.argv[1:] == ["scaling"]:
        scaling(prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir))
        return
    torch.set_num_threads(SETTINGS.threads)
    gpu = f", {torch.cuda.get_device_name()}" if DEVICE == "cuda" else ""
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus{gpu}, torch threads 1")
    model_dir = prepare_model(DEFAULT_MODEL, ModelSettings().cache_dir)
    print(
        f"model: {DEFAULT_MODEL} on {DEVICE}, LoRA r={SETTINGS.rank}, batch {SETTINGS.batch_size}, {STEPS} steps, "
        f"{REPEATS} repeats"
    )
    rates: dict[str, list[float]] = {"ours": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = write_dataset(Path(tmp) / "data.jsonl", n=max(32, SETTINGS.batch_size * 4))
        runs = {"ours": ours, "bare": bare}
        for repeat in range(REPEATS + 1):  # repeat 0 warms both up
            for name, run in runs.items():
                seconds, tokens = run(model_dir, dataset, Path(tmp) / f"{name}-{repeat}")
                if repeat:
                    rates[name].append(tokens / seconds)
                    print(f"  {name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s")
    ours_rate, bare_rate = statistics.median(rates["ours"]), statistics.median(rates["bare"])
    print(f"{'bare peft tok/s':>16} {'feedback.training tok/s':>24} {'ours / bare':>12}")
    print(f"{bare_rate:>16.1f} {ours_rate:>24.1f} {ours_rate / bare_rate:>12.2f}")


if __name__ == "__main__":
    main()
