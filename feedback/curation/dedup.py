"""Near-duplicate removal: exact Jaccard similarity of word shingles, candidates found by MinHash LSH.

MinHash (datasketch, seeded permutations, so runs repeat exactly) only proposes candidate pairs:
the LSH index is banded for recall (:func:`lsh_bands`), and each candidate is then checked with
the exact Jaccard similarity of the two shingle sets. So the threshold is exact for every pair the
index proposes, near-misses below it always stay, and the cost stays near linear in the examples.
"""

from __future__ import annotations

import re
from collections import Counter

from datasketch import MinHash, MinHashLSH  # type: ignore[import-untyped]

from feedback.examples import Example
from feedback.settings import CurationSettings

LSH_RECALL = 0.999  # least probability that the index proposes a pair exactly at the threshold
_WORD = re.compile(r"\w+")
_SCHEME = "affine32"  # datasketch's permutation scheme, named so signatures never change with its default


def shingles(text: str, size: int) -> frozenset[str]:
    """The text's word ``size``-grams, case folded (a shorter text is one shingle of all its words)."""
    words = _WORD.findall(text.casefold())
    if len(words) <= size:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i : i + size]) for i in range(len(words) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard similarity of two sets (two empty sets are identical: 1.0)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def lsh_bands(threshold: float, permutations: int, recall: float = LSH_RECALL) -> tuple[int, int]:
    """``(bands, rows)`` of an LSH index that proposes a pair at ``threshold`` with at least ``recall``.

    The most rows per band that still reach the recall: fewer chance candidates to check.
    """
    best = (permutations, 1)
    for rows in range(1, permutations + 1):
        bands = permutations // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


def drop_near_duplicates(examples: list[Example], settings: CurationSettings) -> tuple[list[Example], Counter[str]]:
    """Drop each example at least ``dedup_threshold`` Jaccard-similar to an earlier kept one."""
    threshold, permutations = settings.dedup_threshold, settings.minhash_permutations
    lsh = MinHashLSH(threshold=threshold, num_perm=permutations, params=lsh_bands(threshold, permutations))
    kept: list[Example] = []
    kept_shingles: list[frozenset[str]] = []
    counts: Counter[str] = Counter()
    # the seeded permutations are drawn once and shared by every signature
    seeded = MinHash(num_perm=permutations, seed=settings.minhash_seed, scheme=_SCHEME).permutations
    for example in examples:
        grams = shingles(example.text, settings.shingle_words)
        signature = MinHash(num_perm=permutations, seed=settings.minhash_seed, permutations=seeded, scheme=_SCHEME)
        signature.update_batch([g.encode() for g in sorted(grams)])
        candidates = sorted(int(key) for key in lsh.query(signature))
        if any(jaccard(grams, kept_shingles[i]) >= threshold for i in candidates):
            counts["near_duplicate"] += 1
            continue
        lsh.insert(str(len(kept)), signature)
        kept.append(example)
        kept_shingles.append(grams)
    return kept, counts
