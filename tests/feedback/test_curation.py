"""Curation: exact counts per stage on crafted examples, the files it writes, and its determinism.

Expected similarities are computed here independently of the code under test: Jaccard values
follow from how the texts are built (distinct words, so every shingle is distinct), and TF-IDF
values from the textbook formula written out with numpy.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS  # type: ignore[import-untyped]

from feedback.curation import (
    HELD_OUT_FILE,
    MANIFEST_FILE,
    TRAIN_FILE,
    CurationError,
    compile_blocklist,
    content_filter,
    curate,
    curate_to_dir,
    drop_near_duplicates,
    is_held_out,
    jaccard,
    length_filter,
    lsh_bands,
    perplexity_filter,
    prompt_perplexities,
    redact_examples,
    relevance_filter,
    relevance_scores,
    shingles,
    split,
    write_dataset,
)
from feedback.examples import Example, Source, read_examples, write_examples
from feedback.model.runtime import ModelRuntime
from feedback.settings import CurationSettings, Settings

WORDS = [f"w{i:02d}" for i in range(60)]  # distinct words: every shingle of a text built from them is distinct


def ex(eid: str, user: str, completion: str, source: Source = "confidence", system: str | None = None) -> Example:
    messages = ({"role": "system", "content": system},) if system else ()
    return Example(eid, (*messages, {"role": "user", "content": user}), completion, source)


def words_example(eid: str, words: Sequence[str]) -> Example:
    """An example whose text is ``words`` (the first five as the prompt, the rest as the answer)."""
    return ex(eid, " ".join(words[:5]), " ".join(words[5:]))


# -- settings ----------------------------------------------------------------------------------
def test_curation_settings_defaults_and_bounds() -> None:
    settings = Settings().curation
    assert (settings.min_tokens, settings.max_tokens) == (50, 2048)
    assert settings.dedup_threshold == 0.9
    assert settings.relevance_keep_share == 0.3
    assert not settings.relevance_enabled
    assert not settings.perplexity_enabled
    with pytest.raises(ValueError, match=r"min_tokens \(60\) must not exceed max_tokens \(59\)"):
        CurationSettings(min_tokens=60, max_tokens=59)


# -- PII ---------------------------------------------------------------------------------------
def test_pii_is_redacted_in_prompt_and_answer_and_counted() -> None:
    examples = [
        ex("a", "mail jane.doe@example.com or call (415) 555-2671", "I wrote to jane.doe@example.com", system="SSN?"),
        ex("b", "order #13812345678 shipped", "thanks"),
    ]
    redacted, counts = redact_examples(examples)
    assert redacted[0].messages == (
        {"role": "system", "content": "SSN?"},
        {"role": "user", "content": "mail [EMAIL] or call [PHONE]"},
    )
    assert redacted[0].completion == "I wrote to [EMAIL]"
    assert redacted[1] == examples[1]  # an order number is not personal data
    assert counts == {"EMAIL": 2, "PHONE": 1, "examples_changed": 1}


# -- length ------------------------------------------------------------------------------------
def sequence_length(runtime: ModelRuntime, example: Example) -> int:
    completion = runtime.tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    return len(runtime.render_prompt(example.messages)) + len(completion) + 1  # + end-of-turn


@pytest.mark.model
def test_length_counts_the_chat_template_and_both_bounds_are_inclusive(runtime: ModelRuntime) -> None:
    # SmolLM2's template adds its default system prompt: 39 tokens for this tiny exchange
    assert sequence_length(runtime, ex("q", "What is 2+2?", "4")) == 39
    answers = [
        "four",
        "four, of course",
        "it is four, of course, as always",
        "it is four, of course, as always, yes yes",
    ]
    examples = [ex(f"e{i}", "What is 2+2?", answer) for i, answer in enumerate(answers)]
    lengths = [sequence_length(runtime, e) for e in examples]
    assert lengths == sorted(set(lengths))  # strictly longer one after the other
    kept, counts = length_filter(runtime, examples, min_tokens=lengths[1], max_tokens=lengths[2])
    assert [e.id for e in kept] == ["e1", "e2"]
    assert counts == {"too_short": 1, "too_long": 1}
    kept, counts = length_filter(runtime, examples, min_tokens=lengths[1] + 1, max_tokens=lengths[2] - 1)
    assert (kept, counts) == ([], {"too_short": 2, "too_long": 2})


# -- content -----------------------------------------------------------------------------------
def test_content_filter_matches_whole_terms_and_patterns_and_counts_reasons() -> None:
    settings = CurationSettings(blocked_terms=("password", "credit card"), blocked_patterns=(r"kill\s+-9",))
    examples = [
        ex("a", "What is my Password?", "no"),  # term, any case
        ex("b", "How are passwords stored?", "hashed"),  # not the whole word: kept
        ex("c", "stuck", "run KILL   -9 on it"),  # pattern, in the answer
        ex("d", "pay by credit card?", "yes, and by password too"),  # first rule wins: password
        ex("e", "pay by credit  card?", "yes"),  # two spaces: the phrase does not match
    ]
    kept, counts = content_filter(examples, compile_blocklist(settings))
    assert [e.id for e in kept] == ["b", "e"]
    assert counts == {"term:password": 2, r"pattern:kill\s+-9": 1}


def test_an_invalid_pattern_is_refused_by_name() -> None:
    with pytest.raises(CurationError, match=r"curation.blocked_patterns: '\(unclosed' is not a valid regular"):
        compile_blocklist(CurationSettings(blocked_patterns=("(unclosed",)))


# -- near-duplicates ---------------------------------------------------------------------------
def test_shingles_and_jaccard() -> None:
    assert shingles("The cat, the CAT sat.", 3) == {"the cat the", "cat the cat", "the cat sat"}
    assert shingles("two words", 3) == {"two words"}
    assert shingles("?!", 3) == frozenset()
    assert jaccard(frozenset("abc"), frozenset("bcd")) == 0.5
    assert jaccard(frozenset(), frozenset()) == 1.0


def test_lsh_bands_reach_the_recall_with_the_most_rows() -> None:
    bands, rows = lsh_bands(0.9, 128)
    assert (bands, rows) == (16, 8)
    assert round(1 - (1 - 0.9**rows) ** bands, 5) == 0.99988  # the chosen index reaches the default recall
    # one more row per band reaches only 0.99895: chosen when the recall asked for allows it, not by default
    assert lsh_bands(0.9, 128, recall=0.998) == (14, 9)


def test_near_duplicates_at_the_threshold_go_and_near_misses_stay() -> None:
    base = WORDS[:21]  # 19 shingles of three words
    one_changed = [*base[:-1], "x1"]  # Jaccard 18/20 = 0.9: at the threshold, removed
    two_changed = [*base[:-2], "x1", "x2"]  # Jaccard 17/21 = 0.8095: stays
    long_base = WORDS[:41]
    long_last = [*long_base[:-1], "y1"]  # 38/40 = 0.95
    long_three = [*long_base[:-3], "y1", "y2", "y3"]  # 36/42 = 0.857
    examples = [
        words_example("base", base),
        words_example("one", one_changed),
        words_example("two", two_changed),
        words_example("long", long_base),
        words_example("long-last", long_last),
        words_example("long-three", long_three),
        ex("copy", " ".join(base[:5]).upper(), " ".join(base[5:]) + "!"),  # same words, other case: removed
    ]
    texts = {e.id: shingles(e.text, 3) for e in examples}
    assert jaccard(texts["base"], texts["one"]) == 0.9
    assert jaccard(texts["base"], texts["two"]) == pytest.approx(17 / 21)
    assert jaccard(texts["long"], texts["long-last"]) == pytest.approx(38 / 40)
    assert jaccard(texts["long"], texts["long-three"]) == pytest.approx(36 / 42)
    kept, counts = drop_near_duplicates(examples, CurationSettings())
    assert [e.id for e in kept] == ["base", "two", "long", "long-three"]
    assert counts == {"near_duplicate": 3}


def test_the_first_of_a_cluster_in_input_order_stays() -> None:
    examples = [words_example("later", [*WORDS[:20], "z"]), words_example("first", WORDS[:21])]
    kept, _ = drop_near_duplicates(examples, CurationSettings())
    assert [e.id for e in kept] == ["later"]
    kept, counts = drop_near_duplicates(examples, CurationSettings(dedup_threshold=0.95))
    assert [e.id for e in kept] == ["later", "first"]  # 0.9 < 0.95: both stay
    assert counts == {}


# -- relevance ---------------------------------------------------------------------------------
REFERENCE = [
    ex("r1", "How much does the Aurora lamp cost?", "The Aurora lamp costs 40 dollars."),
    ex("r2", "Does the Aurora lamp ship abroad?", "The lamp ships to Europe in five days."),
    ex("r3", "What colours does the Borealis desk come in?", "The desk comes in oak and walnut."),
]
CANDIDATES = [
    ex("off", "Best way to bake bread at home?", "Knead the dough and bake it hot."),
    ex("on", "What does the Aurora lamp cost and does it ship?", "The Aurora lamp costs 40 dollars and ships."),
    ex("some", "Is the desk sturdy?", "It holds forty kilos of books."),
    ex("near", "Which colours for the Borealis desk?", "Oak, walnut and white."),
]


def textbook_tfidf_scores(texts: list[str], reference: list[str]) -> list[float]:
    """Smoothed idf ln((1+n)/(1+df))+1, tf 1+ln(count), l2 rows; cosine to the reference centroid."""
    docs = [
        [w for w in re.findall(r"(?u)\b\w\w+\b", d.lower()) if w not in ENGLISH_STOP_WORDS]
        for d in [*reference, *texts]
    ]
    vocab = sorted({w for d in docs for w in d})
    df = np.array([sum(w in d for d in docs) for w in vocab])
    idf = np.log((1 + len(docs)) / (1 + df)) + 1
    rows = np.array([[1 + math.log(d.count(w)) if w in d else 0.0 for w in vocab] for d in docs]) * idf
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    centroid = rows[: len(reference)].mean(axis=0)
    return [float(x) for x in rows[len(reference) :] @ (centroid / np.linalg.norm(centroid))]


def test_relevance_scores_match_the_textbook_tfidf_and_order_by_topic() -> None:
    texts, reference = [c.text for c in CANDIDATES], [r.text for r in REFERENCE]
    scores = relevance_scores(texts, reference)
    assert scores == pytest.approx(textbook_tfidf_scores(texts, reference), abs=1e-9)
    assert scores[0] == 0.0  # no word in common with the catalogue
    assert scores[1] > scores[3] > scores[2] > scores[0]
    assert round(scores[1], 5) == round(textbook_tfidf_scores(texts, reference)[1], 5)


def test_relevance_keeps_the_top_share_rounded_up_in_input_order() -> None:
    kept, counts = relevance_filter(CANDIDATES, REFERENCE, CurationSettings(relevance_keep_share=0.3))
    assert [e.id for e in kept] == ["on", "near"]  # ceil(0.3 * 4) = 2, input order kept
    assert counts == {"less_relevant": 2}
    kept, _ = relevance_filter(CANDIDATES, REFERENCE, CurationSettings(relevance_keep_share=0.75))
    assert [e.id for e in kept] == ["on", "some", "near"]
    assert relevance_scores([], ["anything"]) == []
    with pytest.raises(CurationError, match="needs a non-empty reference corpus"):
        relevance_filter(CANDIDATES, [], CurationSettings())


# -- perplexity --------------------------------------------------------------------------------
PROMPTS = [
    "How do I reset the password of my account?",
    "xq zvbn qwpl rrtk mnbv oiuy plkj",
    "What time does the store open on Sundays?",
    "the the the the the the",
]


def unbatched_perplexity(runtime: ModelRuntime, text: str) -> float:
    """The text scored alone in the user turn that the chat template renders around it."""
    tokenizer = runtime.tokenizer
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
    head = tokenizer(rendered[: rendered.index(text)], add_special_tokens=False)["input_ids"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = runtime.model(input_ids=torch.tensor([[*head, *ids]])).logits[0, len(head) - 1 : -1]
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(ids)[:, None])
    return math.exp(-float(logprobs.mean()))


@pytest.mark.model
def test_prompt_perplexity_batched_equals_each_prompt_scored_alone(runtime: ModelRuntime) -> None:
    perplexities = prompt_perplexities(runtime, [*PROMPTS, ""], batch_size=3)
    expected = [unbatched_perplexity(runtime, text) for text in PROMPTS]
    assert perplexities[:4] == pytest.approx(expected, rel=1e-4)
    assert perplexities[4] == math.inf  # no token to score
    # fluent questions read as far likelier user words than a keyboard mash
    assert perplexities[0] < perplexities[2] < perplexities[3] < perplexities[1]
    capped = prompt_perplexities(runtime, [PROMPTS[0] + " " + PROMPTS[1]], max_tokens=8)
    first_eight = runtime.tokenizer.decode(runtime.tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"][:8])
    assert capped == pytest.approx([unbatched_perplexity(runtime, first_eight)], rel=1e-4)


@pytest.mark.model
def test_perplexity_filter_drops_above_the_bound_then_the_worst_share(runtime: ModelRuntime) -> None:
    examples = [ex(f"p{i}", text, "ok", system="You answer shop questions.") for i, text in enumerate(PROMPTS)]
    examples.append(ex("unscored", "zzzz qqqq xxxx", "ok"))  # past perplexity_max_examples: passes
    settings = CurationSettings(
        perplexity_enabled=True, perplexity_max=200.0, perplexity_drop_share=0.34, perplexity_max_examples=4
    )
    kept, counts = perplexity_filter(runtime, examples, settings)
    # p1 (the keyboard mash) is above 200; of the three left, floor(0.34 * 3) = 1 goes: the worst, p3
    assert [e.id for e in kept] == ["p0", "p2", "unscored"]
    assert counts == {"unscored": 1, "above_max": 1, "worst_share": 1}


# -- split and output --------------------------------------------------------------------------
def held_out_by_hand(eid: str, share: float, seed: int) -> bool:
    digest = hashlib.sha256(f"held-out:{seed}:{eid}".encode()).hexdigest()
    return int(digest[:8], 16) % 10_000 < share * 10_000


def test_held_out_split_is_a_salted_hash_of_the_id_and_never_takes_replay() -> None:
    examples = [ex(f"id-{i}", "q", "a") for i in range(200)]
    train, held_out = split(examples, 0.25, seed=7)
    assert [e.id for e in held_out] == [e.id for e in examples if held_out_by_hand(e.id, 0.25, 7)]
    assert [e.id for e in train] == [e.id for e in examples if not held_out_by_hand(e.id, 0.25, 7)]
    assert len(held_out) == 40  # of 200 at a 25% share, for this seed
    assert split(examples, 0.25, seed=8) != (train, held_out)
    replay = [ex(e.id, "q", "a", source="replay") for e in held_out]
    assert not any(is_held_out(e, 0.25, 7) for e in replay)
    assert split(examples, 0.0, seed=7) == (examples, [])


LONG_ANSWER = "The Aurora lamp costs 40 dollars, ships within five days and comes with a two year warranty."


def crafted_examples() -> list[Example]:
    return [
        ex("pii", "My email is jane.doe@example.com and my phone is (415) 555-2671.", LONG_ANSWER),
        ex("short", "hi", "hello"),
        ex("blocked", "What is the admin password of the shop?", LONG_ANSWER),
        ex("fresh-1", "How much is the Aurora lamp and how fast does it ship?", LONG_ANSWER),
        ex("dup-of-1", "How much is the Aurora lamp and how fast does it ship??", LONG_ANSWER),
        ex("fresh-2", "Which colours does the Borealis desk come in, and is it made of solid wood?", LONG_ANSWER),
        ex("replay-1", "Does the Borealis desk ship abroad, and how long does delivery take?", LONG_ANSWER, "replay"),
        ex("fresh-3", "Can I return the Aurora lamp after thirty days if it is unused?", LONG_ANSWER, "correction"),
    ]


def small_settings(**overrides: Any) -> CurationSettings:
    return CurationSettings(min_tokens=40, max_tokens=120, blocked_terms=("password",), held_out_share=0.5, **overrides)


def stage_counts(manifest: dict[str, Any]) -> list[tuple[str, bool, int, int, dict[str, int]]]:
    return [(s["name"], s["enabled"], s["in"], s["out"], s["details"]) for s in manifest["stages"]]


@pytest.mark.model
def test_curated_dataset_on_disk_counts_every_stage(runtime: ModelRuntime, tmp_path: Path) -> None:
    examples = crafted_examples()
    manifest = curate_to_dir(examples, runtime, small_settings(), tmp_path / "day")
    assert stage_counts(manifest) == [
        ("redact_pii", True, 8, 8, {"EMAIL": 1, "PHONE": 1, "examples_changed": 1}),
        ("length", True, 8, 7, {"too_short": 1}),
        ("content", True, 7, 6, {"term:password": 1}),
        ("near_duplicates", True, 6, 5, {"near_duplicate": 1}),
        ("relevance", False, 5, 5, {}),
        ("perplexity", False, 5, 5, {}),
    ]
    kept = ["pii", "fresh-1", "fresh-2", "replay-1", "fresh-3"]
    held = [eid for eid in kept if eid != "replay-1" and held_out_by_hand(eid, 0.5, 0)]
    assert held == ["fresh-1", "fresh-2", "fresh-3"]  # so both files hold examples
    train = read_examples(tmp_path / "day" / TRAIN_FILE)
    held_out = read_examples(tmp_path / "day" / HELD_OUT_FILE)
    assert [e.id for e in train] == [eid for eid in kept if eid not in held]
    assert [e.id for e in held_out] == held
    assert manifest["input"] == {"examples": 8, "by_source": {"confidence": 6, "correction": 1, "replay": 1}}
    assert manifest["output"] == {"examples": 5, "by_source": {"confidence": 3, "correction": 1, "replay": 1}}
    assert manifest["settings"] == small_settings().model_dump(mode="json")
    assert manifest["model"] == runtime.name
    for key, name, part in (("train", TRAIN_FILE, train), ("held_out", HELD_OUT_FILE, held_out)):
        data = (tmp_path / "day" / name).read_bytes()
        assert manifest["files"][key] == {
            "path": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "examples": len(part),
        }
    assert json.loads((tmp_path / "day" / MANIFEST_FILE).read_text(encoding="utf-8")) == manifest
    everything = b"".join(p.read_bytes() for p in (tmp_path / "day").iterdir())
    assert b"jane.doe@example.com" not in everything
    assert b"555-2671" not in everything
    assert b"My email is [EMAIL] and my phone is [PHONE]." in everything
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day"]  # no staging directory left


def without_times(manifest: dict[str, Any]) -> dict[str, Any]:
    stages = [{k: v for k, v in s.items() if k != "seconds"} for s in manifest["stages"]]
    return {**{k: v for k, v in manifest.items() if k not in ("created_at", "seconds")}, "stages": stages}


@pytest.mark.model
def test_the_same_input_gives_byte_identical_files(runtime: ModelRuntime, tmp_path: Path) -> None:
    settings = small_settings(relevance_enabled=True, relevance_keep_share=0.8)
    first = curate_to_dir(crafted_examples(), runtime, settings, tmp_path / "a", reference=REFERENCE)
    second = curate_to_dir(crafted_examples(), runtime, settings, tmp_path / "b", reference=REFERENCE)
    for name in (TRAIN_FILE, HELD_OUT_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert without_times(first) == without_times(second)
    assert first["stages"][4]["details"] == {"less_relevant": 1}  # ceil(0.8 * 5) = 4 kept
    write_examples(tmp_path / "reference.jsonl", REFERENCE)
    assert first["reference"] == {
        "examples": 3,
        "sha256": hashlib.sha256((tmp_path / "reference.jsonl").read_bytes()).hexdigest(),
    }


@pytest.mark.model
def test_the_relevance_corpus_is_read_from_settings(runtime: ModelRuntime, tmp_path: Path) -> None:
    write_examples(tmp_path / "reference.jsonl", REFERENCE)
    settings = CurationSettings(
        min_tokens=1, relevance_enabled=True, relevance_keep_share=0.5, relevance_corpus=tmp_path / "reference.jsonl"
    )
    result = curate(CANDIDATES, runtime, settings)
    assert [e.id for e in result.examples] == ["on", "near"]
    with pytest.raises(CurationError, match=r"relevance_enabled needs curation\.relevance_corpus"):
        curate(CANDIDATES, runtime, CurationSettings(relevance_enabled=True))


@pytest.mark.model
def test_empty_input_gives_an_empty_dataset_and_zero_counts(runtime: ModelRuntime, tmp_path: Path) -> None:
    settings = CurationSettings(perplexity_enabled=True, relevance_enabled=True)
    manifest = curate_to_dir([], runtime, settings, tmp_path / "empty", reference=REFERENCE)
    assert [(s["in"], s["out"]) for s in manifest["stages"]] == [(0, 0)] * 6
    assert manifest["input"] == manifest["output"] == {"examples": 0, "by_source": {}}
    assert (tmp_path / "empty" / TRAIN_FILE).read_bytes() == b""
    assert (tmp_path / "empty" / HELD_OUT_FILE).read_bytes() == b""
    assert manifest["files"]["train"]["sha256"] == hashlib.sha256(b"").hexdigest()


@pytest.mark.model
def test_an_existing_dataset_directory_is_never_overwritten(runtime: ModelRuntime, tmp_path: Path) -> None:
    result = curate(crafted_examples(), runtime, small_settings())
    (tmp_path / "day").mkdir()
    (tmp_path / "day" / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(CurationError, match="already exists and is not empty"):
        write_dataset(result, tmp_path / "day")
    assert [p.name for p in (tmp_path / "day").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day"]
    (tmp_path / "empty").mkdir()
    write_dataset(result, tmp_path / "empty")  # an empty directory is fine
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == [HELD_OUT_FILE, MANIFEST_FILE, TRAIN_FILE]
