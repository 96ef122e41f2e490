"""Sticky assignment of units (users, sessions, requests) to the champion or challenger arm.

``bucket = int(sha256(f"{salt}:{unit}")[:8], 16) mod 10000``; a unit is in the challenger arm when
``bucket < percent * 100``. The hash is stable across processes and machines (Python's ``hash()``
is not), and raising the percentage only adds units to the challenger arm: a unit's bucket never
changes, so everyone below the old threshold is below the new one too.
"""

from __future__ import annotations

import hashlib

from feedback.events import Arm

BUCKETS = 10_000


def bucket(salt: str, unit: str) -> int:
    """The unit's bucket in [0, 10000) for this experiment's salt."""
    digest = hashlib.sha256(f"{salt}:{unit}".encode()).hexdigest()
    return int(digest[:8], 16) % BUCKETS


def assign(salt: str, unit: str, percent: float) -> Arm:
    """``"challenger"`` when the unit's bucket is below ``percent`` * 100, else ``"champion"``."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    return "challenger" if bucket(salt, unit) < percent * 100 else "champion"
