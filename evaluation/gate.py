"""The adapter gate: may a candidate LoRA adapter be registered as deployable?

The candidate is compared with the champion (the base model, or the base model with the
champion's adapter) on one freshly loaded copy of the base model, in three steps:

1. Sanity at load: the adapter's files are readable, every weight is finite, and every LoRA
   tensor fits a linear module of the base model (shapes and rank as its config says).
2. Improvement on the held-out split (at most ``heldout_cap`` examples, the first by SHA-256 of
   their id). Per example, the completion loss is the mean negative log-probability of the
   completion tokens after the rendered prompt, end-of-turn token included
   (``ModelRuntime.score(..., add_eos=True)``). With ``d_i = loss_champion_i - loss_candidate_i``
   the loss must fall: a one-sided paired t-test (``t = mean(d) / (sd(d) / sqrt(n))``, ``n - 1``
   degrees of freedom) and/or a one-sided Wilcoxon signed-rank test (scipy; zero differences
   dropped) below ``alpha``. The task metric on greedy answers (``max_new_tokens``) must not be
   significantly worse: the candidate is refused when its mean falls by more than ``task_margin``
   *and* a one-sided paired test of the fall rejects "no fall" at ``alpha`` (exact McNemar, a
   binomial test on the examples only one of the two got right, for 0/1 metrics; Wilcoxon
   signed-rank otherwise). A raw comparison would refuse on noise: on ten examples one answer
   is ten points. The metric is catalogue correctness (:func:`feedback.catalogue.correct`) when
   every prompt is a catalogue question, else ROUGE-L F1 or normalized exact match against the
   reference.
   Prompt control (``prompt_control``): each held-out answer is also scored after the prompts of
   the next ``control_prompts`` examples (a fixed rotation of the hashed order). Per example, the
   answer's loss must fall more after its own prompt than (on average) after the others:
   ``paired_loss_test`` of the two falls. The answer is the same on both sides, so what the
   adapter learned about the answers' form (length, wording, the end of turn) cancels out and only
   what depends on the prompt remains. An adapter that learned only the form (one trained on
   shuffled answers, say) lowers both alike, and is refused although its held-out loss fell.
3. Non-inferiority on the frozen golden set: mean golden loss of the candidate at most
   ``(1 + golden_margin)`` times the champion's.

Precision (``precision``): "auto" scores and generates with bf16 weights where the CPU computes
bf16 natively, else fp32 (adapters load in the same dtype); the verdict's settings record what
it became. Both models share it, so the paired differences compare like with like.

The verdict lists every reason for a refusal (codes in ``REASONS``) and carries every number it
was decided on, per example included, so it can be stored as the refresh's evaluation record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file
from scipy import stats

from evaluation import constants
from evaluation.similarity import normalize, rouge_l
from feedback import catalogue
from feedback.errors import ModelError
from feedback.examples import read_examples
from feedback.model.adapters import AdapterSet
from feedback.model.runtime import ModelRuntime, SamplingParams, resolve_precision
from feedback.settings import GateSettings

GOLDEN_PATH = Path(__file__).parent / "golden" / "catalogue.jsonl"
CANDIDATE, CHAMPION = "candidate", "champion"
REASONS = {
    "unreadable": "the adapter's files cannot be read",
    "not_finite": "the adapter has NaN or infinite weights",
    "config_mismatch": "the adapter does not fit the base model",
    "too_few_examples": "too few held-out examples to test",
    "no_improvement": "the held-out loss did not fall significantly",
    "prompt_independent": "the held-out loss fell no more on the right answers than on other prompts' answers",
    "task_metric_worse": "the held-out task metric fell beyond the margin, significantly",
    "golden_inferior": "the golden-set loss rose beyond the margin",
}


class GateExample(Protocol):
    """What the gate reads of a dataset row."""

    @property
    def id(self) -> str: ...
    @property
    def messages(self) -> Sequence[Mapping[str, str]]: ...
    @property
    def completion(self) -> str: ...


@dataclass(frozen=True)
class Reason:
    """Why the gate refused: a code from ``REASONS`` and a message with the numbers."""

    code: str
    message: str


@dataclass(frozen=True)
class PairedLossTest:
    """One-sided paired tests that the candidate's per-example loss is below the champion's."""

    n: int
    mean_diff: float = 0.0  # mean of champion - candidate loss; positive when the candidate is better
    sd_diff: float = 0.0
    t_statistic: float = 0.0
    t_p_value: float = 1.0
    wilcoxon_statistic: float = 0.0
    wilcoxon_p_value: float = 1.0
    alpha: float = 0.05
    error: str | None = None

    def significant(self, test: str) -> bool:
        """Whether the chosen test (``paired-t``, ``wilcoxon`` or ``both``) rejects "no fall"."""
        if self.error is not None:
            return False
        t_ok, w_ok = self.t_p_value < self.alpha, self.wilcoxon_p_value < self.alpha
        return {"paired-t": t_ok, "wilcoxon": w_ok}.get(test, t_ok and w_ok)


@dataclass(frozen=True)
class TaskTest:
    """One-sided paired test that the candidate's task metric is below the champion's."""

    n: int
    method: str  # "mcnemar" (every value 0 or 1) or "wilcoxon"
    champion_mean: float
    candidate_mean: float
    statistic: float = 0.0  # mcnemar: examples only the champion got right; wilcoxon: the signed-rank statistic
    discordant: int = 0  # examples where the two differ
    p_value: float = 1.0


@dataclass(frozen=True)
class SplitScores:
    """Per-example numbers of one split for champion and candidate, in example order."""

    ids: list[str]
    champion_loss: list[float]
    candidate_loss: list[float]
    metric: str | None = None
    champion_task: list[float] = field(default_factory=list)
    candidate_task: list[float] = field(default_factory=list)
    champion_answers: list[str] = field(default_factory=list)
    candidate_answers: list[str] = field(default_factory=list)
    # losses of each prompt with the next example's answer (prompt control); empty when not scored
    champion_control_loss: list[float] = field(default_factory=list)
    candidate_control_loss: list[float] = field(default_factory=list)

    @staticmethod
    def mean(values: Sequence[float]) -> float:
        """Arithmetic mean; 0 for no values."""
        return sum(values) / len(values) if values else 0.0


@dataclass(frozen=True)
class GateVerdict:
    """The gate's decision on one candidate, with everything it was decided on."""

    passed: bool
    reasons: list[Reason]
    candidate: str
    champion: str | None
    settings: dict[str, Any]
    heldout: SplitScores | None = None
    golden: SplitScores | None = None
    loss_test: PairedLossTest | None = None
    task_test: TaskTest | None = None
    control_test: PairedLossTest | None = None  # own-answer fall against other-answer fall

    @property
    def codes(self) -> list[str]:
        """The reason codes, in the order the checks ran."""
        return [reason.code for reason in self.reasons]

    def to_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready data."""
        return asdict(self) | {"codes": self.codes}


def paired_loss_test(champion: Sequence[float], candidate: Sequence[float], alpha: float = 0.05) -> PairedLossTest:
    """One-sided paired t and Wilcoxon signed-rank tests of ``champion - candidate > 0``."""
    diffs = [a - b for a, b in zip(champion, candidate, strict=True)]
    n = len(diffs)
    if n < 2:
        return PairedLossTest(n, SplitScores.mean(diffs), alpha=alpha, error=constants.TOO_FEW_UNITS)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd == 0:
        return PairedLossTest(n, mean, alpha=alpha, error=constants.ZERO_VARIANCE)
    t = mean / (sd / math.sqrt(n))
    w_stat, w_p = 0.0, 1.0
    if any(d != 0 for d in diffs):
        with warnings.catch_warnings():
            # scipy notes when ties or zeros force the normal approximation; that is the method then.
            warnings.simplefilter("ignore", UserWarning)
            result = stats.wilcoxon(diffs, alternative="greater", zero_method="wilcox")
        w_stat, w_p = float(result.statistic), float(result.pvalue)
    return PairedLossTest(n, mean, sd, t, float(stats.t.sf(t, n - 1)), w_stat, w_p, alpha)


def task_fall_test(champion: Sequence[float], candidate: Sequence[float]) -> TaskTest:
    """One-sided paired test of ``champion - candidate > 0`` on per-example task values."""
    diffs = [a - b for a, b in zip(champion, candidate, strict=True)]
    n, mean = len(diffs), SplitScores.mean
    binary = all(v in (0.0, 1.0) for v in (*champion, *candidate))
    nonzero = [d for d in diffs if d != 0]
    base = TaskTest(n, "mcnemar" if binary else "wilcoxon", mean(champion), mean(candidate), discordant=len(nonzero))
    if not nonzero:
        return base
    if binary:
        lost = sum(d > 0 for d in nonzero)
        p = stats.binomtest(lost, len(nonzero), 0.5, alternative="greater").pvalue
        return replace(base, statistic=float(lost), p_value=float(p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # as in paired_loss_test: ties switch scipy's method
        result = stats.wilcoxon(diffs, alternative="greater", zero_method="wilcox")
    return replace(base, statistic=float(result.statistic), p_value=float(result.pvalue))


def check_adapter(adapter_dir: Path, base: torch.nn.Module) -> list[Reason]:
    """Sanity of a saved LoRA adapter against the base model, before anything runs through it."""
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    except (OSError, ValueError, RuntimeError) as exc:
        return [Reason("unreadable", f"adapter {str(adapter_dir)!r} cannot be read: {exc}")]
    bad = {name: int((~torch.isfinite(t)).sum()) for name, t in tensors.items() if not torch.isfinite(t).all()}
    if bad:
        first = min(bad)
        return [
            Reason(
                "not_finite",
                f"adapter weights are not finite: {sum(bad.values())} NaN/inf values in {len(bad)} tensors "
                f"(first {first!r})",
            )
        ]
    problem = _config_problem(config, tensors, base)
    return [Reason("config_mismatch", f"adapter does not fit the base model: {problem}")] if problem else []


def evaluate_candidate(
    model_dir: Path,
    candidate: Path,
    heldout: Sequence[GateExample],
    *,
    champion: Path | None = None,
    golden: Sequence[GateExample] | None = None,
    settings: GateSettings | None = None,
) -> GateVerdict:
    """Judge the adapter in ``candidate`` against ``champion`` (None: the base model alone).

    Loads its own copy of the base model from ``model_dir`` (adapters change a model in place).
    ``golden`` defaults to the golden set of ``settings.golden_path``.
    """
    settings = settings or GateSettings()
    runtime, precision = gate_runtime(model_dir, settings)
    recorded = settings.model_dump(mode="json") | {"precision": precision}  # what "auto" became on this machine
    verdict = GateVerdict(False, [], str(candidate), str(champion) if champion else None, recorded)
    reasons = [
        Reason(r.code, f"{role}: {r.message}")
        for role, path in ((CHAMPION, champion), (CANDIDATE, candidate))
        if path is not None
        for r in check_adapter(path, runtime.model)
    ]
    if reasons:
        return _with(verdict, reasons=reasons)
    adapters = AdapterSet(runtime)
    try:
        for name, path in ((CHAMPION, champion), (CANDIDATE, candidate)):
            if path is not None:
                adapters.load(name, path)
    except ModelError as exc:
        return _with(verdict, reasons=[Reason("config_mismatch", str(exc))])
    models = _Models(runtime, adapters, champion is not None)
    sample = heldout_sample(heldout, settings.heldout_cap)
    if len(sample) < 2:
        return _with(verdict, reasons=[Reason("too_few_examples", f"{len(sample)} held-out examples; at least 2")])
    metric = _task_metric(sample, settings.task_metric)
    control = settings.control_prompts if settings.prompt_control else 0
    held = models.scores(sample, metric, settings.max_new_tokens, control=control)
    gold = models.scores(golden if golden is not None else load_golden(settings), None, 0)
    return decide(held, gold, settings, _with(verdict))


def gate_runtime(model_dir: Path, settings: GateSettings) -> tuple[ModelRuntime, str]:
    """A fresh copy of the base model in the precision the gate scores with, and that precision."""
    precision = resolve_precision(settings.precision, "cpu")
    return ModelRuntime.load(model_dir, dtype="bfloat16" if precision == "bf16" else "float32"), precision


def heldout_sample(heldout: Sequence[GateExample], cap: int) -> list[GateExample]:
    """The held-out examples the gate scores: the first ``cap`` by SHA-256 of their id."""
    return sorted(heldout, key=lambda e: hashlib.sha256(e.id.encode()).hexdigest())[:cap]


def completion_losses(runtime: ModelRuntime, pairs: Sequence[tuple[Sequence[Mapping[str, str]], str]]) -> list[float]:
    """Mean negative log-probability of each completion (end-of-turn included) after its messages."""
    return [-sum(lp) / len(lp) for lp in runtime.score_batch(pairs, add_eos=True)]


def decide(heldout: SplitScores, golden: SplitScores, settings: GateSettings, verdict: GateVerdict) -> GateVerdict:
    """The decision on scored splits: every failed check becomes a reason."""
    test = paired_loss_test(heldout.champion_loss, heldout.candidate_loss, settings.alpha)
    reasons = []
    mean = SplitScores.mean
    if not test.significant(settings.test):
        reasons.append(
            Reason(
                "no_improvement",
                f"held-out loss {mean(heldout.champion_loss):.5f} (champion) vs {mean(heldout.candidate_loss):.5f} "
                f"(candidate) over {test.n} examples: mean fall {test.mean_diff:.5f}, one-sided paired t "
                f"p = {test.t_p_value:.4g}, Wilcoxon p = {test.wilcoxon_p_value:.4g}, alpha {settings.alpha}"
                + (f" ({test.error})" if test.error else ""),
            )
        )
    control = None
    if heldout.champion_control_loss:
        own = [a - b for a, b in zip(heldout.champion_loss, heldout.candidate_loss, strict=True)]
        other = [a - b for a, b in zip(heldout.champion_control_loss, heldout.candidate_control_loss, strict=True)]
        control = paired_loss_test(own, other, settings.alpha)
        if test.significant(settings.test) and not control.significant(settings.test):
            reasons.append(
                Reason(
                    "prompt_independent",
                    f"held-out loss fell {mean(own):.5f} on answers after their own prompts and {mean(other):.5f} "
                    f"after other prompts over {control.n} examples: one-sided paired t "
                    f"p = {control.t_p_value:.4g}, Wilcoxon p = {control.wilcoxon_p_value:.4g}, alpha "
                    f"{settings.alpha}; the adapter learned the answers' form, not what the prompt asks"
                    + (f" ({control.error})" if control.error else ""),
                )
            )
    task = task_fall_test(heldout.champion_task, heldout.candidate_task) if heldout.metric else None
    if task and task.candidate_mean < task.champion_mean - settings.task_margin and task.p_value < settings.alpha:
        reasons.append(
            Reason(
                "task_metric_worse",
                f"held-out {heldout.metric} {task.champion_mean:.5f} (champion) vs {task.candidate_mean:.5f} "
                f"(candidate) over {task.n} examples, margin {settings.task_margin}: one-sided {task.method} "
                f"p = {task.p_value:.4g}, alpha {settings.alpha}",
            )
        )
    gold_a, gold_b = mean(golden.champion_loss), mean(golden.candidate_loss)
    if not golden.ids:
        reasons.append(Reason("too_few_examples", "the golden set is empty, so non-inferiority cannot be shown"))
    elif not gold_b <= gold_a * (1 + settings.golden_margin):
        reasons.append(
            Reason(
                "golden_inferior",
                f"golden loss {gold_a:.5f} (champion) vs {gold_b:.5f} (candidate) over {len(golden.ids)} examples: "
                f"{(gold_b / gold_a - 1) * 100 if gold_a else math.inf:+.2f}%, margin "
                f"+{settings.golden_margin * 100:.2f}%",
            )
        )
    return _with(
        verdict,
        passed=not reasons,
        reasons=reasons,
        heldout=heldout,
        golden=golden,
        loss_test=test,
        task_test=task,
        control_test=control,
    )


def load_golden(settings: GateSettings) -> list[GateExample]:
    """The golden set named by the settings (the shipped catalogue set by default)."""
    return list(read_examples(settings.golden_path or GOLDEN_PATH))


class _Models:
    """Champion and candidate on one runtime: peft switches the active adapter between passes."""

    def __init__(self, runtime: ModelRuntime, adapters: AdapterSet, champion_adapter: bool) -> None:
        self._runtime, self._champion_adapter = runtime, champion_adapter
        self._peft: Any = adapters.model

    def scores(
        self, examples: Sequence[GateExample], metric: str | None, max_new_tokens: int, *, control: int = 0
    ) -> SplitScores:
        """Losses (and task values when ``metric`` is set) of both models; with ``control``, also each answer's
        mean loss after the prompts of the next ``control`` examples (fewer when there are not that many others)."""
        results = {}
        n, k = len(examples), min(control, len(examples) - 1)
        pairs = [
            (examples[(i + j) % n].messages, e.completion) for i, e in enumerate(examples) for j in range(1, k + 1)
        ]
        for name in (CHAMPION, CANDIDATE):
            with self._active(name):
                losses = self._losses([(e.messages, e.completion) for e in examples])
                scored = self._losses(pairs) if k else []
                controls = [sum(scored[i * k : (i + 1) * k]) / k for i in range(n)] if k else []
                answers = self._answers(examples, max_new_tokens) if metric else []
            tasks = [_task_value(metric, e, a) for e, a in zip(examples, answers, strict=True)] if metric else []
            results[name] = (losses, tasks, answers, controls)
        (loss_a, task_a, ans_a, ctl_a), (loss_b, task_b, ans_b, ctl_b) = results[CHAMPION], results[CANDIDATE]
        return SplitScores([e.id for e in examples], loss_a, loss_b, metric, task_a, task_b, ans_a, ans_b, ctl_a, ctl_b)

    def _losses(self, pairs: Sequence[tuple[Sequence[Mapping[str, str]], str]]) -> list[float]:
        return completion_losses(self._runtime, pairs)

    def _answers(self, examples: Sequence[GateExample], max_new_tokens: int) -> list[str]:
        greedy = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        return [g.text for g in self._runtime.generate_batch([(e.messages, greedy) for e in examples])]

    def _active(self, name: str) -> Any:
        if name == CHAMPION and not self._champion_adapter:
            return self._peft.disable_adapter()
        self._peft.set_adapter(name)
        return contextlib.nullcontext()


def _task_metric(examples: Sequence[GateExample], chosen: str) -> str:
    if chosen != "auto":
        return chosen
    every = all(catalogue.parse_question(e.messages) is not None for e in examples)
    return "catalogue" if every else "rouge-l"


def _task_value(metric: str | None, example: GateExample, answer: str) -> float:
    if metric == "catalogue":
        question = catalogue.parse_question(example.messages)
        return float(question is not None and catalogue.correct(question, answer))
    if metric == "exact":
        return float(normalize(answer) == normalize(example.completion))
    return rouge_l(answer, example.completion)


def _config_problem(
    config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], base: torch.nn.Module
) -> str | None:
    if config.get("peft_type") != "LORA":
        return f"peft_type is {config.get('peft_type')!r}, not 'LORA'"
    rank = config.get("r")
    modules = dict(base.named_modules())
    for name, tensor in sorted(tensors.items()):
        path, _, kind = name.removeprefix("base_model.model.").rpartition(".lora_")
        module = modules.get(path)
        if not isinstance(module, torch.nn.Linear):
            return f"{name!r} names no linear module of the base model"
        want = (rank, module.in_features) if kind.startswith("A") else (module.out_features, rank)
        if tuple(tensor.shape) != want:
            return f"{name!r} has shape {tuple(tensor.shape)}, the base model and rank {rank} need {want}"
    return None


def _with(verdict: GateVerdict, **changes: Any) -> GateVerdict:
    return GateVerdict(**{**verdict.__dict__, **changes})
