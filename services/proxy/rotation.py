"""Round-robin order of the upstreams: each request starts one further along the list."""

from __future__ import annotations

import itertools
from collections.abc import Sequence


class RoundRobin:
    """Hands out the upstreams in turn; the rest follow in list order, as fallbacks."""

    def __init__(self, upstreams: Sequence[str]) -> None:
        if not upstreams:
            raise ValueError("a round robin needs at least one upstream")
        self._upstreams = tuple(upstreams)
        self._turns = itertools.count()  # one event loop calls this: no lock needed

    def order(self) -> list[str]:
        """Every upstream once, starting with the one whose turn it is."""
        start = next(self._turns) % len(self._upstreams)
        return [*self._upstreams[start:], *self._upstreams[:start]]
