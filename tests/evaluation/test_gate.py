"""The adapter gate on the real default model: planted adapters are refused for the right reason.

A small LoRA adapter is trained here on catalogue questions (``_train_for_test``); the planted
adapters are that adapter with its B matrices zeroed (a no-op), a NaN written into it, its B
matrices scaled x10, and one trained the same way on shuffled answers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from evaluation import constants
from evaluation.gate import (
    GOLDEN_PATH,
    GateVerdict,
    SplitScores,
    decide,
    evaluate_candidate,
    load_golden,
    paired_loss_test,
    task_fall_test,
)
from feedback.catalogue import Question, build_catalogue, make_questions
from feedback.model.runtime import ModelRuntime
from feedback.settings import GateSettings

WEIGHTS = "adapter_model.safetensors"
SETTINGS = GateSettings(max_new_tokens=20)  # the key fact comes in the answer's first sentence


@pytest.fixture(scope="module")
def train_questions() -> list[Question]:
    return make_questions(build_catalogue(5), 5, 16, id_prefix="train")


@pytest.fixture(scope="module")
def heldout() -> list[Question]:
    return make_questions(build_catalogue(7), 7, 16, id_prefix="held")  # 8 were too few for the prompt control


@pytest.fixture(scope="module")
def golden() -> list[object]:
    return load_golden(SETTINGS)[:8]  # a slice keeps the test fast; the full set is the default


def _train_for_test(model_dir: Path, prompts: Sequence[Question], answers: Sequence[str], out: Path) -> Path:
    """A few peft LoRA steps on (prompt, answer) pairs: loss on the completion tokens only."""
    torch.manual_seed(0)
    runtime = ModelRuntime.load(model_dir)
    eos = int(runtime.tokenizer.eos_token_id)
    config = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(runtime.model, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for question, answer in zip(prompts, answers, strict=True):
        prompt = runtime.render_prompt(question.messages)
        completion = [*runtime.tokenizer(answer, add_special_tokens=False)["input_ids"], eos]
        labels = torch.tensor([[-100] * len(prompt) + completion])  # -100: no loss on the prompt
        model(input_ids=torch.tensor([prompt + completion]), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def good(model_dir: Path, train_questions: list[Question], tmp_path_factory: pytest.TempPathFactory) -> Path:
    answers = [q.answer for q in train_questions]
    return _train_for_test(model_dir, train_questions, answers, tmp_path_factory.mktemp("good"))


def planted(adapter: Path, out: Path, change: Callable[[str, torch.Tensor], torch.Tensor]) -> Path:
    """A copy of ``adapter`` with every tensor passed through ``change(name, tensor)``."""
    out.mkdir()
    shutil.copyfile(adapter / "adapter_config.json", out / "adapter_config.json")
    tensors = {name: change(name, t).contiguous() for name, t in load_file(str(adapter / WEIGHTS)).items()}
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    return out


def gate(model_dir: Path, candidate: Path, heldout: list[Question], golden: list[object]) -> GateVerdict:
    return evaluate_candidate(model_dir, candidate, heldout, golden=golden, settings=SETTINGS)  # type: ignore[arg-type]


def test_paired_loss_test_pins_scipy_values() -> None:
    champion, candidate = [2.3, 1.8, 2.5, 1.95, 1.7, 2.25], [2.0, 1.7, 2.1, 2.0, 1.5, 2.0]
    result = paired_loss_test(champion, candidate, alpha=0.05)
    # scipy.stats.ttest_rel(champion, candidate, alternative="greater"); Wilcoxon exact: W+ = 20 of 21, p = 2/64
    assert result.n == 6
    assert result.mean_diff == pytest.approx(0.2, abs=1e-9)
    assert result.t_statistic == pytest.approx(3.0983866769659336, abs=1e-9)
    assert result.t_p_value == pytest.approx(0.013451165235384333, abs=1e-9)
    assert result.wilcoxon_statistic == 20.0
    assert result.wilcoxon_p_value == pytest.approx(0.03125, abs=1e-9)
    assert result.significant("both")
    worse = paired_loss_test(candidate, champion)
    assert worse.t_p_value == pytest.approx(0.9865488347646156, abs=1e-9)
    assert worse.wilcoxon_p_value == pytest.approx(0.984375, abs=1e-9)
    assert not worse.significant("paired-t")


def test_paired_loss_test_returns_an_error_on_degenerate_input() -> None:
    same = paired_loss_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (same.error, same.mean_diff, same.t_p_value) == (constants.ZERO_VARIANCE, 0.0, 1.0)
    assert not same.significant("both")
    one = paired_loss_test([2.0], [1.0])
    assert (one.error, one.n) == (constants.TOO_FEW_UNITS, 1)


def test_task_fall_test_pins_scipy_values() -> None:
    right4 = [1.0] * 4 + [0.0] * 6
    # 0.4 -> 0.2: two answers lost, none gained; exact one-sided binomial P(X >= 2 | 2, 1/2)
    two_lost = task_fall_test(right4, [1.0] * 2 + [0.0] * 8)
    assert (two_lost.method, two_lost.n, two_lost.discordant, two_lost.statistic) == ("mcnemar", 10, 2, 2.0)
    assert (two_lost.champion_mean, two_lost.candidate_mean, two_lost.p_value) == (0.4, 0.2, 0.25)
    # three lost, one gained: P(X >= 3 | 4, 1/2) = 5/16
    assert task_fall_test(right4, [1.0, 0.0, 0.0, 0.0, 1.0] + [0.0] * 5).p_value == pytest.approx(0.3125, abs=1e-12)
    # eight lost, none gained: 1/256
    assert task_fall_test([1.0] * 8 + [0.0] * 2, [0.0] * 10).p_value == pytest.approx(0.00390625, abs=1e-12)
    # ROUGE-L-like values: Wilcoxon exact, W+ = 20 of 21, p = 2/64
    rouge = task_fall_test([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.8, 0.6, 0.4, 0.2, 0.0, 0.45])
    assert (rouge.method, rouge.statistic) == ("wilcoxon", 20.0)
    assert rouge.p_value == pytest.approx(0.03125, abs=1e-12)
    same = task_fall_test([1.0, 0.0], [1.0, 0.0])
    assert (same.discordant, same.p_value) == (0, 1.0)


def test_the_gate_refuses_a_task_metric_fall_only_when_it_is_significant() -> None:
    settings = GateSettings()
    champion_loss = [2.0 + n / 10 for n in range(10)]
    candidate_loss = [1.5 + n / 9 for n in range(10)]  # falls on every example
    golden = SplitScores(["g"], [1.0], [1.0])

    def verdict(champion_task: list[float], candidate_task: list[float]) -> GateVerdict:
        ids = [str(n) for n in range(10)]
        held = SplitScores(ids, champion_loss, candidate_loss, "catalogue", champion_task, candidate_task)
        return decide(held, golden, settings, GateVerdict(False, [], "candidate", None, {}))

    noise = verdict([1.0] * 4 + [0.0] * 6, [1.0] * 2 + [0.0] * 8)
    assert (noise.passed, noise.codes) == (True, [])
    assert noise.task_test is not None
    assert noise.task_test.p_value == 0.25
    fall = verdict([1.0] * 8 + [0.0] * 2, [0.0] * 10)
    assert fall.codes == ["task_metric_worse"]
    assert fall.reasons[0].message == (
        "held-out catalogue 0.80000 (champion) vs 0.00000 (candidate) over 10 examples, margin 0.0: "
        "one-sided mcnemar p = 0.003906, alpha 0.05"
    )


def test_gate_settings_name_the_field_out_of_range() -> None:
    with pytest.raises(ValidationError, match="alpha"):
        GateSettings(alpha=1.5)
    with pytest.raises(ValidationError, match="heldout_cap"):
        GateSettings(heldout_cap=1)


def test_the_default_golden_set_is_the_committed_catalogue_set() -> None:
    examples = load_golden(GateSettings())
    rows = [json.loads(line) for line in GOLDEN_PATH.read_text(encoding="utf-8").splitlines()]
    assert [e.id for e in examples] == [row["id"] for row in rows]
    assert len(examples) == 40


def test_a_trained_adapter_passes(model_dir: Path, good: Path, heldout: list[Question], golden: list[object]) -> None:
    verdict = gate(model_dir, good, heldout, golden)
    assert verdict.reasons == []
    assert verdict.passed
    assert verdict.heldout is not None
    assert verdict.golden is not None
    assert verdict.loss_test is not None
    assert verdict.heldout.metric == "catalogue"
    assert verdict.heldout.ids == sorted(verdict.heldout.ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    mean = verdict.heldout.mean
    assert mean(verdict.heldout.candidate_loss) < mean(verdict.heldout.champion_loss)
    assert verdict.loss_test.t_p_value < 0.05
    assert verdict.loss_test.wilcoxon_p_value < 0.05
    # it learned what the prompts ask: the loss fell more on each prompt's own answer than on another's
    assert verdict.control_test is not None
    assert verdict.control_test.mean_diff > 0
    assert verdict.control_test.t_p_value < 0.05
    assert verdict.control_test.wilcoxon_p_value < 0.05
    assert mean(verdict.heldout.candidate_task) >= mean(verdict.heldout.champion_task)
    assert mean(verdict.golden.candidate_loss) <= mean(verdict.golden.champion_loss) * 1.02
    assert json.loads(json.dumps(verdict.to_dict()))["settings"]["alpha"] == 0.05


def test_a_no_op_adapter_is_refused_as_no_improvement(
    model_dir: Path, good: Path, heldout: list[Question], golden: list[object], tmp_path: Path
) -> None:
    noop = planted(good, tmp_path / "noop", lambda name, t: torch.zeros_like(t) if "lora_B" in name else t)
    verdict = gate(model_dir, noop, heldout, golden)
    assert verdict.codes == ["no_improvement"]
    assert verdict.heldout is not None
    assert verdict.loss_test is not None
    assert verdict.heldout.candidate_loss == verdict.heldout.champion_loss  # B = 0: the base model exactly
    assert verdict.loss_test.error == constants.ZERO_VARIANCE


def test_nan_weights_are_refused_at_load(model_dir: Path, good: Path, heldout: list[Question], tmp_path: Path) -> None:
    def poison(name: str, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        if "layers.0.self_attn.q_proj.lora_A" in name:
            t[0, :3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
        return t

    verdict = gate(model_dir, planted(good, tmp_path / "nan", poison), heldout, [])
    assert verdict.codes == ["not_finite"]
    assert verdict.reasons[0].message == (
        "candidate: adapter weights are not finite: 3 NaN/inf values in 1 tensors "
        "(first 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight')"
    )
    assert verdict.heldout is None
    assert not verdict.passed


def test_an_adapter_for_another_shape_is_refused_at_load(
    model_dir: Path, good: Path, heldout: list[Question], tmp_path: Path
) -> None:
    wrong = planted(good, tmp_path / "wrong", lambda name, t: t)
    config = json.loads((wrong / "adapter_config.json").read_text(encoding="utf-8"))
    (wrong / "adapter_config.json").write_text(json.dumps(config | {"r": 8}), encoding="utf-8")
    verdict = gate(model_dir, wrong, heldout, [])
    assert verdict.codes == ["config_mismatch"]
    assert verdict.reasons[0].message == (
        "candidate: adapter does not fit the base model: "
        "'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' "
        "has shape (4, 576), the base model and rank 8 need (8, 576)"
    )


def test_the_good_adapter_scaled_x10_is_refused(
    model_dir: Path, good: Path, heldout: list[Question], golden: list[object], tmp_path: Path
) -> None:
    loud = planted(good, tmp_path / "x10", lambda name, t: t * 10 if "lora_B" in name else t)
    verdict = gate(model_dir, loud, heldout, golden)
    assert not verdict.passed
    assert "no_improvement" in verdict.codes
    assert "golden_inferior" in verdict.codes


def test_an_adapter_trained_on_shuffled_answers_is_refused(
    model_dir: Path,
    train_questions: list[Question],
    heldout: list[Question],
    golden: list[object],
    tmp_path: Path,
) -> None:
    answers = [q.answer for q in train_questions]
    shuffled = _train_for_test(model_dir, train_questions, answers[1:] + answers[:1], tmp_path / "shuffled")
    verdict = gate(model_dir, shuffled, heldout, golden)
    # its held-out loss fell (it learned the answers' form), but no more on the right answers than on others
    assert verdict.loss_test is not None
    assert verdict.loss_test.significant("both")
    assert verdict.codes == ["prompt_independent"]
    assert verdict.reasons[0].message.startswith("held-out loss fell ")
    assert verdict.reasons[0].message.endswith("the adapter learned the answers' form, not what the prompt asks")


def test_too_few_heldout_examples_are_refused(
    model_dir: Path, good: Path, heldout: list[Question], golden: list[object]
) -> None:
    verdict = gate(model_dir, good, heldout[:1], golden)
    assert verdict.codes == ["too_few_examples"]
    assert verdict.reasons[0].message == "1 held-out examples; at least 2"
