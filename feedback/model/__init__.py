"""The loop's model side: find and convert the base model, load it, generate and score.

Nothing here downloads from a model hub: every load is local (``local_files_only``), and
``HF_HUB_OFFLINE`` is set before transformers is first imported through this package.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
