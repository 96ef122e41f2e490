"""Continuous batching: requests join and leave a running batch between decoding steps.

A :class:`ContinuousBatch` holds the rows that are generating and their shared KV cache (a
transformers ``DynamicCache``). Each call to :meth:`ContinuousBatch.step` does, under the runtime's
lock:

1. **Leave.** Rows that finished or were cancelled leave at once: their rows of the cache, the
   attention mask and the last tokens are dropped (``index_select`` on the batch dimension), and
   cache columns that only padding is left in are trimmed.
2. **Decode.** One forward step for every running row: its last token, at its own position
   (explicit ``position_ids``, so rotary embeddings are right whatever padding the row has).
3. **Join.** Newcomers are prefilled together (left-padded to their longest prompt, one forward)
   and their first token is sampled; then their cache is merged into the running one: both are
   right-aligned, the narrower one is padded on the left with masked columns.

The lock is held for one step at a time, so an adapter loads (:mod:`feedback.model.adapters`)
between two steps without stopping the rows in flight. Rows share nothing but the forward passes:
each has its own sampling, budget, stops, streaming and LoRA adapter (peft ``adapter_names``, with
:data:`BASE_ADAPTER` for the base model); see :mod:`feedback.model.rows`.

:func:`generate_mixed` runs a fixed set of rows to the end on one such batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from feedback.errors import ModelError
from feedback.model.rows import BASE_ADAPTER, BatchRow, DoneCallback, TextCallback, advance, finish, pick_tokens
from feedback.model.runtime import Generation, ModelRuntime

__all__ = ["BASE_ADAPTER", "BatchRow", "ContinuousBatch", "DoneCallback", "TextCallback", "generate_mixed"]

ModelSource = Callable[[], Any | None]
"""Returns the peft model serving the adapters, or None while there is none (read under the lock)."""


class ContinuousBatch:
    """The rows generating now and their KV cache (see the module docstring)."""

    def __init__(self, runtime: ModelRuntime, model: ModelSource = lambda: None) -> None:
        self._runtime = runtime
        self._model = model
        self._rows: list[BatchRow] = []
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros((0, 0), dtype=torch.long)
        self._last = torch.zeros((0, 1), dtype=torch.long)  # each row's newest token, not yet in the cache
        self._positions = torch.zeros((0, 1), dtype=torch.long)  # that token's position in its row

    @property
    def rows(self) -> list[BatchRow]:
        """The rows generating now, in batch order."""
        return list(self._rows)

    @property
    def width(self) -> int:
        """Columns of the KV cache: the longest running row, padding trimmed."""
        return int(self._mask.shape[1])

    def step(self, newcomers: Sequence[BatchRow] = ()) -> list[BatchRow]:
        """Drop finished rows, decode one token for each running row, then let ``newcomers`` join.

        Returns the rows that finished in this step (their ``on_done`` was called). When a forward
        pass fails the batch is left empty and the error raised; the rows it held are not finished.
        """
        with self._runtime.lock, torch.inference_mode():
            try:
                finished = self._leave()
                if self._rows:
                    finished += self._decode()
                if newcomers:
                    finished += self._join(list(newcomers))
                self._keep([i for i, row in enumerate(self._rows) if not row.done])
            except Exception:
                self.reset()
                raise
        return finished

    def reset(self) -> list[BatchRow]:
        """Drop every row and the cache; returns the rows dropped (unfinished)."""
        dropped, self._rows, self._cache = self._rows, [], None
        self._mask = torch.zeros((0, 0), dtype=torch.long)
        self._last = self._positions = torch.zeros((0, 1), dtype=torch.long)
        return dropped

    def _leave(self) -> list[BatchRow]:
        finished = []
        for row in self._rows:
            if row.cancelled and not row.done:
                finish(self._runtime, row)
                finished.append(row)
        self._keep([i for i, row in enumerate(self._rows) if not row.done])
        return finished

    def _decode(self) -> list[BatchRow]:
        device = self._runtime.model.device
        ones = torch.ones((len(self._rows), 1), dtype=torch.long)
        self._mask = torch.cat([self._mask, ones], dim=1)
        logits, self._cache = self._forward(
            self._rows, self._last, self._mask, self._positions, self._cache, device=device
        )
        self._positions = self._positions + 1
        return self._sample(self._rows, logits, start=0)

    def _join(self, newcomers: list[BatchRow]) -> list[BatchRow]:
        ids, mask = self._runtime.left_pad([row.prompt_ids for row in newcomers])
        ids, mask = ids.cpu(), mask.cpu()
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits, cache = self._forward(newcomers, ids, mask, positions, None, device=self._runtime.model.device)
        self._merge(newcomers, cache, mask)
        self._last = torch.cat([self._last, torch.zeros((len(newcomers), 1), dtype=torch.long)])
        self._positions = torch.cat([self._positions, mask.sum(dim=1, keepdim=True)])
        return self._sample(newcomers, logits, start=len(self._rows) - len(newcomers))

    def _forward(
        self,
        rows: Sequence[BatchRow],
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache | None,
        *,
        device: torch.device,
    ) -> tuple[torch.Tensor, DynamicCache]:
        model, extra = self._model(), dict[str, Any]()
        if model is None:
            model = self._runtime.model
            if any(row.adapter != BASE_ADAPTER for row in rows):
                raise ValueError("rows name adapters but no adapter model was given")
        else:
            # A peft model applies its active adapter unless told per row, so always name them.
            extra["adapter_names"] = [row.adapter for row in rows]
        out = cast(Any, model)(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            cache=cache if cache is not None else DynamicCache(),
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits: the next token
            **extra,
        )
        return out.logits[:, -1, :], out.cache

    def _sample(self, rows: Sequence[BatchRow], logits: torch.Tensor, *, start: int) -> list[BatchRow]:
        tokens = pick_tokens(rows, logits)
        self._last[start : start + len(rows), 0] = torch.tensor(tokens, dtype=torch.long)
        finished = []
        for row, token in zip(rows, tokens, strict=True):
            advance(self._runtime, row, token)
            if row.done:
                finish(self._runtime, row)
                finished.append(row)
        return finished

    def _merge(self, newcomers: list[BatchRow], cache: DynamicCache, mask: torch.Tensor) -> None:
        if self._cache is None:
            self._rows, self._cache, self._mask = newcomers, cache, mask
            return
        width = max(self.width, mask.shape[1])
        for mine, theirs in zip(_layers(self._cache), _layers(cache), strict=True):
            mine.keys = torch.cat([_pad_left(_keys(mine), width, dim=2), _pad_left(_keys(theirs), width, dim=2)])
            mine.values = torch.cat([_pad_left(_values(mine), width, dim=2), _pad_left(_values(theirs), width, dim=2)])
        self._mask = torch.cat([_pad_left(self._mask, width, dim=1), _pad_left(mask, width, dim=1)])
        self._rows = self._rows + newcomers

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self._rows):
            return
        if not keep:
            self.reset()
            return
        index = torch.tensor(keep, dtype=torch.long)
        mask = self._mask.index_select(0, index)
        # Columns where no kept row has a token are padding for everyone: trim them.
        first = int(torch.nonzero(mask.sum(dim=0))[0, 0])
        self._mask = mask[:, first:]
        assert self._cache is not None
        for layer in _layers(self._cache):
            on = index.to(_keys(layer).device)
            layer.keys = _keys(layer).index_select(0, on)[:, :, first:]
            layer.values = _values(layer).index_select(0, on)[:, :, first:]
        self._last = self._last.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        self._rows = [self._rows[i] for i in keep]


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers; rows are aligned by column, which only full-attention layers allow."""
    layers = list(cache.layers)
    if not all(isinstance(layer, DynamicLayer) and not layer.is_sliding for layer in layers):
        raise ModelError("continuous batching needs a model whose every layer keeps a full-attention KV cache")
    return cast(list[DynamicLayer], layers)


def _keys(layer: DynamicLayer) -> torch.Tensor:
    return cast(torch.Tensor, layer.keys)


def _values(layer: DynamicLayer) -> torch.Tensor:
    return cast(torch.Tensor, layer.values)


def _pad_left(tensor: torch.Tensor, width: int, *, dim: int) -> torch.Tensor:
    """``tensor`` padded with zeros (masked columns) on the left of ``dim`` up to ``width``."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    # F.pad lists (left, right) pairs from the last dimension backwards.
    pads = [0, 0] * (tensor.dim() - 1 - dim) + [missing, 0]
    return F.pad(tensor, pads)


def generate_mixed(runtime: ModelRuntime, rows: Sequence[BatchRow], model: Any | None = None) -> list[Generation]:
    """Generate every row to its end on one continuous batch; ``model`` is a peft model when rows name adapters."""
    batch = ContinuousBatch(runtime, lambda: model)
    batch.step(rows)
    while batch.rows:
        batch.step()
    return [cast(Generation, row.result) for row in rows]
