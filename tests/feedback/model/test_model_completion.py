"""Where a completion ends and its confidence, on hand-made token ids (no model)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from feedback.model.completion import Ending, confidence, find_ending, first_stop

EOS = 0
# A toy vocabulary: token id -> text; EOS decodes to nothing, like a skipped special token.
VOCAB = {EOS: "", 1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "!\n", 6: "Bye"}


def decode(ids: Sequence[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def ending(ids: list[int], stop: tuple[str, ...] = ()) -> Ending:
    return find_ending(ids, decode=decode, eos_ids={EOS}, stop=stop)


def test_eos_is_counted_and_padding_after_it_is_not() -> None:
    assert ending([1, 2, EOS, EOS, EOS]) == Ending("Hello", 3, "stop")


def test_no_eos_and_no_stop_means_length() -> None:
    assert ending([1, 2, 3, 4]) == Ending("Hello world", 4, "length")


def test_stop_string_cuts_text_and_counts_the_completing_token() -> None:
    # "wo" ends inside token 3 (" wor"): that token is counted, the text stops before "wo".
    assert ending([1, 2, 3, 4, 5], stop=("wo",)) == Ending("Hello ", 3, "stop")


def test_earliest_of_several_stop_strings_wins() -> None:
    assert ending([1, 2, 3, 4, 5], stop=("!", "lo")) == Ending("Hel", 2, "stop")


def test_stop_string_after_eos_is_ignored() -> None:
    assert ending([1, 2, EOS, 6], stop=("Bye",)) == Ending("Hello", 3, "stop")


def test_stop_string_at_the_start_gives_empty_text_but_one_token() -> None:
    assert ending([1, 2], stop=("Hel",)) == Ending("", 1, "stop")


def test_first_stop() -> None:
    assert first_stop("abcabc", ("c", "b")) == 1
    assert first_stop("abc", ("x",)) is None


def test_confidence_is_exp_of_mean_logprob() -> None:
    assert confidence([math.log(0.5), math.log(0.5)]) == pytest.approx(0.5, abs=1e-12)
    assert confidence([math.log(0.2), math.log(0.8)]) == pytest.approx(0.4, abs=1e-12)
    assert confidence([0.0]) == 1.0
    assert confidence([]) == 1.0
