"""LoRA adapters on one base model: load versions while serving, pick one per batch row.

The first adapter wraps the runtime's model in a peft model; later ones are added to it by name
(``load_adapter``), under the runtime's lock, that is between two decoding steps of the running
batch (:mod:`feedback.model.batch`): rows in flight keep their adapter, and rows that join later
may name the new one. Rows then name their adapter through
:data:`feedback.model.batch.BASE_ADAPTER` or a loaded name (peft ``adapter_names``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from peft import PeftModel

from feedback.errors import ModelError
from feedback.model.runtime import ModelRuntime


class AdapterSet:
    """The LoRA adapters loaded on a runtime's base model, by name."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self._runtime = runtime
        self._peft: Any | None = None
        self._names: set[str] = set()

    @property
    def model(self) -> Any | None:
        """The peft model serving every adapter, or None while no adapter is loaded."""
        return self._peft

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def load(self, name: str, adapter_dir: Path) -> None:
        """Load the adapter saved in ``adapter_dir`` under ``name`` (a no-op when already loaded).

        Raises:
            ModelError: the directory holds no adapter that fits the base model.
        """
        if name in self._names:
            return
        with self._runtime.lock, warnings.catch_warnings():
            # peft asks transformers 5 for a deprecated alias; nothing for us to change.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(
                        self._runtime.model, adapter_dir, adapter_name=name, autocast_adapter_dtype=False
                    )
                else:
                    self._peft.load_adapter(adapter_dir, adapter_name=name, autocast_adapter_dtype=False)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise ModelError(f"could not load adapter {name!r} from {str(adapter_dir)!r}: {exc}") from exc
            self._peft.eval()
            self._names.add(name)
