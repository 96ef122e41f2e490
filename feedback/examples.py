"""Training examples: the dataset format shared by curation, training and the gate.

A dataset is a JSONL file, one example a line, keys in this order::

    {"id": "...", "messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...],
     "completion": "...", "source": "confidence"|"correction"|"replay"|"golden"|"catalogue"}

``messages`` is the prompt as it was served; ``completion`` the target answer. Files are written
compactly (no spaces, UTF-8 kept as is) and atomically, so the same examples always give the same
bytes and a crash never leaves half a file.

Tokenisation (:func:`tokenize_example`) is the one that training, scoring and the gate share: the
prompt ids are :meth:`ModelRuntime.render_prompt` (the chat template with the generation prompt),
the completion ids are the tokenizer's ids of ``completion`` without special tokens followed by the
end-of-turn id that :meth:`ModelRuntime.score` appends; loss and log-probabilities count only the
completion ids.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from feedback.errors import FlywheelError
from feedback.model.runtime import ModelRuntime

Source = Literal["confidence", "correction", "replay", "golden", "catalogue"]
SOURCES: tuple[str, ...] = get_args(Source)
ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # label of a token the loss skips (the prompt), as torch's cross-entropy expects


class DatasetError(FlywheelError):
    """A dataset file is missing, unreadable, or holds a line that is not a valid example."""


@dataclass(frozen=True, slots=True)
class Example:
    """One training example: a served prompt, its target answer, and where it came from."""

    id: str
    messages: tuple[Mapping[str, str], ...]
    completion: str
    source: Source

    @property
    def prompt_text(self) -> str:
        """The prompt's own words: every non-system message's content, one per line.

        System prompts are left out: they are the application's, shared by many examples, so they
        say nothing about a prompt's duplicates, topic or quality.
        """
        return "\n".join(m["content"] for m in self.messages if m["role"] != "system")

    @property
    def text(self) -> str:
        """Prompt and answer as one text (:attr:`prompt_text`, then the completion)."""
        return f"{self.prompt_text}\n{self.completion}"

    def to_json(self) -> dict[str, Any]:
        """The example as the JSON object of one dataset line."""
        return {
            "id": self.id,
            "messages": [{"role": m["role"], "content": m["content"]} for m in self.messages],
            "completion": self.completion,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, obj: object) -> Example:
        """Build an example from one decoded dataset line.

        Raises:
            ValueError: a field is missing, has the wrong type or an unknown value (the message names it).
        """
        if not isinstance(obj, dict):
            raise ValueError(f"an example must be a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - {"id", "messages", "completion", "source"})
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}")
        example_id = _string(obj, "id")
        if not example_id:
            raise ValueError("id must not be empty")
        source = _string(obj, "source")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)} (got {source!r})")
        return cls(example_id, _messages(obj.get("messages")), _string(obj, "completion"), source)  # type: ignore[arg-type]


def _string(obj: Mapping[str, object], field: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string (got {value!r})")
    return value


def _messages(value: object) -> tuple[Mapping[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("messages must be a non-empty list")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(f"messages[{index}] must be an object with exactly role and content")
        if message["role"] not in ROLES:
            raise ValueError(f"messages[{index}].role must be one of {', '.join(ROLES)} (got {message['role']!r})")
        if not isinstance(message["content"], str):
            raise ValueError(f"messages[{index}].content must be a string")
        messages.append({"role": message["role"], "content": message["content"]})
    return tuple(messages)


def dumps(example: Example) -> str:
    """One dataset line (without the newline): compact JSON, keys in the format's order."""
    return json.dumps(example.to_json(), ensure_ascii=False, separators=(",", ":"))


def write_examples(path: Path, examples: Iterable[Example]) -> None:
    """Write ``examples`` to ``path`` as JSONL, atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            for example in examples:
                handle.write(dumps(example) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_examples(path: Path) -> list[Example]:
    """Read a dataset file; blank lines are skipped.

    Raises:
        DatasetError: the file cannot be read, or a line is not a valid example (``path:line: why``).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the dataset: {exc}") from exc
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            examples.append(Example.from_json(json.loads(line)))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            raise DatasetError(f"{path}:{number}: {exc}") from exc
    return examples


@dataclass(frozen=True, slots=True)
class TokenizedExample:
    """An example as token ids: the rendered prompt, then the completion ending in end-of-turn."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)

    @property
    def input_ids(self) -> list[int]:
        """Prompt and completion ids as one sequence."""
        return [*self.prompt_ids, *self.completion_ids]

    @property
    def labels(self) -> list[int]:
        """Training labels: :data:`IGNORE_INDEX` over the prompt, the completion ids after it."""
        return [IGNORE_INDEX] * len(self.prompt_ids) + list(self.completion_ids)


def tokenize_example(runtime: ModelRuntime, example: Example) -> TokenizedExample:
    """The ids that training and scoring use for ``example`` (see the module docstring)."""
    completion = runtime.tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    return TokenizedExample(
        prompt_ids=tuple(runtime.render_prompt(example.messages)),
        completion_ids=(*(int(i) for i in completion), runtime.scoring_eos_id),
    )


def tokenize_examples(runtime: ModelRuntime, examples: Sequence[Example]) -> list[TokenizedExample]:
    """:func:`tokenize_example` for each example, in order."""
    return [tokenize_example(runtime, example) for example in examples]
