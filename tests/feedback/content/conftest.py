"""One torch thread while the content tests run the learned classifier.

Its forward passes are short (tens of tokens): a second intra-op thread gains nothing, and on a
busy 2-core machine the two threads wait on each other, about 10 times slower (measured 500 ms
against 35 ms a check). The previous count comes back after each module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
