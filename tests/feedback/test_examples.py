"""The dataset format: exact bytes written, every malformed line refused by name, shared tokenisation."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedback.examples import (
    IGNORE_INDEX,
    DatasetError,
    Example,
    dumps,
    read_examples,
    tokenize_example,
    write_examples,
)
from feedback.model.runtime import ModelRuntime

EXAMPLE = Example(
    id="int-1",
    messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Größe von Ü?"}),
    completion='Sie ist "groß".\nJa.',
    source="confidence",
)


def test_a_line_is_compact_json_in_the_format_order() -> None:
    assert dumps(EXAMPLE) == (
        '{"id":"int-1","messages":[{"role":"system","content":"Be brief."},'
        '{"role":"user","content":"Größe von Ü?"}],"completion":"Sie ist \\"groß\\".\\nJa.",'
        '"source":"confidence"}'
    )


def test_written_examples_read_back_equal(tmp_path: Path) -> None:
    other = Example("int-2", ({"role": "user", "content": "hi"},), "hello", "correction")
    path = tmp_path / "data" / "train.jsonl"
    write_examples(path, [EXAMPLE, other])
    assert path.read_bytes() == (dumps(EXAMPLE) + "\n" + dumps(other) + "\n").encode()
    assert read_examples(path) == [EXAMPLE, other]
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.jsonl"]  # no temporary file left


def test_writing_replaces_a_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    write_examples(path, [EXAMPLE, EXAMPLE])
    write_examples(path, [])
    assert path.read_bytes() == b""
    assert read_examples(path) == []


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n" + dumps(EXAMPLE) + "\n\n", encoding="utf-8")
    assert read_examples(path) == [EXAMPLE]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "d.jsonl:2: Expecting property name enclosed in double quotes"),
        ("[1]", "d.jsonl:2: an example must be a JSON object, got list"),
        (
            '{"id":"a","messages":[{"role":"user","content":"q"}],"completion":"c"}',
            "d.jsonl:2: source must be a string",
        ),
        (
            '{"id":"a","messages":[{"role":"user","content":"q"}],"completion":"c","source":"web"}',
            "d.jsonl:2: source must be one of confidence, correction, replay, golden, catalogue (got 'web')",
        ),
        ('{"id":"","messages":[{"role":"user","content":"q"}],"completion":"c","source":"replay"}', "id must not"),
        ('{"id":"a","messages":[],"completion":"c","source":"replay"}', "messages must be a non-empty list"),
        (
            '{"id":"a","messages":[{"role":"bot","content":"q"}],"completion":"c","source":"replay"}',
            "d.jsonl:2: messages[0].role must be one of system, user, assistant (got 'bot')",
        ),
        (
            '{"id":"a","messages":[{"role":"user"}],"completion":"c","source":"replay"}',
            "messages[0] must be an object with exactly role and content",
        ),
        (
            '{"id":"a","messages":[{"role":"user","content":3}],"completion":"c","source":"replay"}',
            "messages[0].content must be a string",
        ),
        ('{"id":"a","messages":[{"role":"user","content":"q"}],"completion":null,"source":"replay"}', "completion"),
        (
            '{"id":"a","messages":[{"role":"user","content":"q"}],"completion":"c","source":"replay","x":1}',
            "d.jsonl:2: unknown field 'x'",
        ),
    ],
)
def test_an_invalid_line_is_refused_with_its_place_and_reason(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(dumps(EXAMPLE) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        read_examples(path)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{path}:2: ")


def test_a_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read the dataset"):
        read_examples(tmp_path / "absent.jsonl")


def test_prompt_text_leaves_out_system_messages() -> None:
    example = Example(
        "a",
        (
            {"role": "system", "content": "S"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "second"},
        ),
        "answer",
        "confidence",
    )
    assert example.prompt_text == "first\nreply\nsecond"
    assert example.text == "first\nreply\nsecond\nanswer"


@pytest.mark.model
def test_tokenisation_is_the_one_scoring_uses(runtime: ModelRuntime) -> None:
    tokens = tokenize_example(runtime, EXAMPLE)
    completion = runtime.tokenizer(EXAMPLE.completion, add_special_tokens=False)["input_ids"]
    assert tokens.prompt_ids == tuple(runtime.render_prompt(EXAMPLE.messages))
    assert tokens.completion_ids == (*completion, runtime.scoring_eos_id)
    assert runtime.scoring_eos_id in runtime.eos_ids
    assert len(tokens) == len(tokens.input_ids) == len(tokens.prompt_ids) + len(completion) + 1
    assert tokens.labels == [IGNORE_INDEX] * len(tokens.prompt_ids) + list(tokens.completion_ids)
    # the same ids score exactly as ModelRuntime.score does with its end-of-turn token
    assert runtime.score_tokens(tokens.prompt_ids, tokens.completion_ids) == runtime.score(
        EXAMPLE.messages, EXAMPLE.completion, add_eos=True
    )
