"""Curation: turn selected examples into a clean training dataset, every stage counted.

:func:`curate` runs the stages below over a list of :class:`~feedback.examples.Example`, in this
order, each reported in a :class:`StageReport` (examples in and out, why they went, seconds):

1. ``redact_pii``: every message and the completion go through :func:`feedback.pii.redact`,
   before any other stage looks at them and before anything is written (nothing is dropped).
2. ``length``: prompt (chat template with the generation prompt) + completion + end-of-turn, in
   tokens, exactly the sequence training sees (:func:`feedback.examples.tokenize_example`); kept
   when ``min_tokens <= n <= max_tokens`` (both bounds inclusive).
3. ``content``: drop examples whose prompt or answer matches a blocked term (whole words, case
   folded) or pattern (a regular expression, case folded); the first matching rule is the reason.
   The matching is the gateway's content filter's own (:class:`feedback.content.TermFilter`).
   It runs before deduplication so that a blocked example never stands for the cluster it heads.
4. ``near_duplicates``: word shingles of prompt and answer; a later example whose Jaccard
   similarity to a kept one is at least ``dedup_threshold`` goes, so the first of each cluster in
   input order stays. MinHash LSH (datasketch, seeded permutations) only finds candidate pairs,
   banded for recall (a pair at the threshold is missed with probability below 0.001); each
   candidate is then checked with the exact Jaccard similarity, so near-misses stay.
5. ``relevance`` (optional): TF-IDF (scikit-learn) cosine similarity to the centroid of a reference
   corpus; the ``relevance_keep_share`` most similar are kept (rounded up; ties to input order).
6. ``perplexity`` (optional): perplexity of the prompt's own words as a user turn under the base
   model (:func:`prompt_perplexities`); drop those above ``perplexity_max``, then the worst
   ``perplexity_drop_share`` of the rest (rounded down). At most ``perplexity_max_examples`` are
   scored (the first, in input order); the others pass unscored and are counted.

Cheap stages run first so that the costly ones (MinHash, the model) see fewer examples. The kept
examples keep their input order. :func:`write_dataset` splits them (replay examples always train;
the others are held out by a salted hash of their id, see :func:`is_held_out`) and writes
``train.jsonl``, ``held_out.jsonl`` and ``manifest.json`` into a new directory, atomically.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from feedback.curation.dedup import drop_near_duplicates, jaccard, lsh_bands, shingles
from feedback.curation.filters import compile_blocklist, content_filter, length_filter, redact_examples
from feedback.curation.output import (
    HELD_OUT_FILE,
    MANIFEST_FILE,
    TRAIN_FILE,
    by_source,
    describe_reference,
    is_held_out,
    split,
    write_dataset,
)
from feedback.curation.perplexity import perplexity_filter, prompt_perplexities
from feedback.curation.relevance import relevance_filter, relevance_scores
from feedback.curation.report import CurationError, CurationResult, StageReport
from feedback.examples import Example, read_examples
from feedback.model.runtime import ModelRuntime
from feedback.settings import CurationSettings

__all__ = [
    "HELD_OUT_FILE",
    "MANIFEST_FILE",
    "TRAIN_FILE",
    "CurationError",
    "CurationResult",
    "StageReport",
    "compile_blocklist",
    "content_filter",
    "curate",
    "curate_to_dir",
    "drop_near_duplicates",
    "is_held_out",
    "jaccard",
    "length_filter",
    "lsh_bands",
    "perplexity_filter",
    "prompt_perplexities",
    "redact_examples",
    "relevance_filter",
    "relevance_scores",
    "shingles",
    "split",
    "write_dataset",
]

Stage = Callable[[list[Example]], tuple[list[Example], Counter[str]]]


def curate(
    examples: Sequence[Example],
    runtime: ModelRuntime,
    settings: CurationSettings,
    *,
    reference: Sequence[Example] | None = None,
) -> CurationResult:
    """Run every stage over ``examples`` (see the module docstring); ``runtime`` is the base model.

    ``reference`` is the relevance corpus; without it, ``settings.relevance_corpus`` is read when
    the relevance stage is enabled.

    Raises:
        CurationError: a blocked pattern does not compile, or relevance is enabled without a corpus.
        DatasetError: the configured reference corpus cannot be read.
    """
    blocklist = compile_blocklist(settings)
    if settings.relevance_enabled and reference is None:
        reference = _read_reference(settings)
    stages: list[tuple[str, bool, Stage]] = [
        ("redact_pii", True, redact_examples),
        ("length", True, lambda xs: length_filter(runtime, xs, settings.min_tokens, settings.max_tokens)),
        ("content", True, lambda xs: content_filter(xs, blocklist)),
        ("near_duplicates", True, lambda xs: drop_near_duplicates(xs, settings)),
        ("relevance", settings.relevance_enabled, lambda xs: relevance_filter(xs, reference or (), settings)),
        ("perplexity", settings.perplexity_enabled, lambda xs: perplexity_filter(runtime, xs, settings)),
    ]
    current = list(examples)
    reports = []
    for name, enabled, stage in stages:
        started = time.perf_counter()
        kept, details = stage(current) if enabled else (current, Counter[str]())
        reports.append(StageReport(name, enabled, len(current), len(kept), details, time.perf_counter() - started))
        current = kept
    return CurationResult(
        examples=tuple(current),
        stages=tuple(reports),
        input_count=len(examples),
        input_sources=by_source(examples),
        settings=settings,
        model=runtime.name,
        reference=None if reference is None or not settings.relevance_enabled else describe_reference(reference),
    )


def curate_to_dir(
    examples: Sequence[Example],
    runtime: ModelRuntime,
    settings: CurationSettings,
    out_dir: Path,
    *,
    reference: Sequence[Example] | None = None,
) -> dict[str, Any]:
    """:func:`curate` then :func:`write_dataset`: the refresh's curation step; returns the manifest."""
    return write_dataset(curate(examples, runtime, settings, reference=reference), out_dir)


def _read_reference(settings: CurationSettings) -> list[Example]:
    if settings.relevance_corpus is None:
        raise CurationError("curation.relevance_enabled needs curation.relevance_corpus (a dataset JSONL file)")
    return read_examples(settings.relevance_corpus)
