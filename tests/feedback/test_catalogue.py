"""The synthetic catalogue task: determinism, the checker, the prompt parser and the frozen golden set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from feedback.catalogue import (
    GOLDEN_COUNT,
    Product,
    Question,
    build_catalogue,
    correct,
    golden_examples,
    make_questions,
    parse_question,
)
from feedback.model.runtime import ModelRuntime

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "evaluation" / "golden" / "catalogue.jsonl"
LAMP = Product("FW-1042-00", "Aurora Desk Lamp", "$34.99", "slate grey", "compact", "oak", 17)
MUG = Product("FW-2211-01", "Ember Coffee Mug", "$134.99", "coral", "slim", "ceramic", 170)


def question(attribute: str, distractors: tuple[str, ...] = ()) -> Question:
    return Question("q", attribute, LAMP, (), "", distractors)  # type: ignore[arg-type]


def test_the_same_seed_builds_the_same_catalogue_and_questions() -> None:
    first = make_questions(build_catalogue(5), 5, 30)
    again = make_questions(build_catalogue(5), 5, 30)
    assert [q.example() for q in first] == [q.example() for q in again]
    assert build_catalogue(5) != build_catalogue(6)
    assert len({p.name for p in build_catalogue(5, 200)}) == 200
    assert first[0].id == "catalogue-5-0000"


def test_a_question_names_its_product_and_the_reference_states_the_fact() -> None:
    for q in make_questions(build_catalogue(1), 1, 50):
        system, user = q.messages[0]["content"], q.messages[1]["content"]
        assert q.product.name in user
        assert f"SKU {q.product.sku}: {q.product.name};" in system
        assert system.count("\n- SKU ") == 3  # the asked product and two others
        assert correct(q, q.answer)
        assert q.fact not in q.distractors


@pytest.mark.parametrize(
    ("attribute", "answer", "expected"),
    [
        ("price", "It costs $34.99.", True),
        ("price", "It costs 34.99 dollars.", True),
        ("price", "It costs $134.99.", False),  # a longer number is another price
        ("price", "It costs $34.9.", False),
        ("stock", "We have 17 in stock.", True),
        ("stock", "We have 170 in stock.", False),
        ("stock", "SKU FW-1017 has none.", False),  # digits inside the SKU are not a count
        ("stock", "We have 17.5 units.", False),
        ("colour", "It is Slate  Grey.", True),  # case and spacing do not matter
        ("colour", "It is grey.", False),
        ("size", "It comes in compact.", True),
        ("material", "Made of oakwood.", False),  # whole words only
        ("material", "Made of oak.", True),
    ],
)
def test_correct_needs_the_whole_key_fact(attribute: str, answer: str, expected: bool) -> None:
    assert correct(question(attribute), answer) is expected


def test_correct_refuses_an_answer_that_also_names_another_listed_value() -> None:
    hedged = question("colour", distractors=("coral", "ivory"))
    assert correct(hedged, "It comes in slate grey.")
    assert not correct(hedged, "It comes in slate grey or coral.")


def test_parse_question_recovers_every_generated_question_from_its_prompt() -> None:
    questions = make_questions(build_catalogue(3), 3, 300)
    for q in questions:
        parsed = parse_question(q.messages)
        assert parsed is not None
        assert (parsed.attribute, parsed.product, parsed.answer, parsed.distractors) == (
            q.attribute,
            q.product,
            q.answer,
            q.distractors,
        )
    assert {q.attribute for q in questions} == {"price", "colour", "size", "material", "stock"}


def test_parse_question_returns_none_for_other_prompts() -> None:
    q = make_questions(build_catalogue(3), 3, 1)[0]
    assert parse_question([{"role": "user", "content": "What is the capital of France?"}]) is None
    assert parse_question([q.messages[0], {"role": "user", "content": "Do you sell gift cards?"}]) is None
    broken = q.messages[0]["content"].replace("; colour", "; color")
    assert parse_question([{"role": "system", "content": broken}, q.messages[1]]) is None


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"size must be in 1\.\.320, got 0"):
        build_catalogue(1, 0)
    with pytest.raises(ValueError, match=r"listed must be in 1\.\.2, got 3"):
        make_questions(build_catalogue(1, 2), 1, 1)


def test_the_committed_golden_set_is_what_the_documented_command_writes(tmp_path: Path) -> None:
    out = tmp_path / "golden.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "feedback.catalogue", str(out)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {GOLDEN_COUNT} golden examples to {out}\n"
    assert out.read_bytes() == GOLDEN.read_bytes()
    rows = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 40
    assert {row["source"] for row in rows} == {"golden"}
    assert len({row["id"] for row in rows}) == 40
    assert rows == golden_examples()


def test_golden_references_come_from_the_catalogue_not_a_model() -> None:
    for row in golden_examples():
        parsed = parse_question(row["messages"])  # type: ignore[arg-type]
        assert parsed is not None
        assert row["completion"] == parsed.answer


def test_every_golden_example_passes_a_50_token_length_filter(runtime: ModelRuntime) -> None:
    eos = 1  # counted as the runtime scores a completion: its ids plus the end-of-turn token
    lengths = []
    for row in golden_examples():
        prompt = runtime.render_prompt(row["messages"])  # type: ignore[arg-type]
        completion = runtime.tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        lengths.append(len(prompt) + len(completion) + eos)
        assert len(completion) >= 15  # a full sentence or two
    assert min(lengths) >= 50
