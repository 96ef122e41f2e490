"""The GPU extra in tests: vLLM's modules imported up front, with the warnings they raise while importing.

Tests turn warnings into errors; vLLM's dependencies warn while they import (deprecations), and so
do the modules vLLM imports while it checks a model (torch.jit deprecations), none of them ours to
fix. Importing them here, quietly, keeps the errors for warnings from our own code.
"""

from __future__ import annotations

import importlib
import warnings

from services.gateway import vllm_backend

QUIET_IMPORTS = ("vllm.v1.engine.async_llm", "vllm.model_executor.model_loader", "torch._inductor.compile_fx")


def preload_vllm() -> bool:
    """Import vLLM's modules quietly where the extra and a GPU are present; whether they are."""
    if not vllm_backend.available():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in QUIET_IMPORTS:
            importlib.import_module(module)
    return True
