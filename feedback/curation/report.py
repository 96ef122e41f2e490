"""What curation reports: one record per stage, the curated result, and the package's error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from feedback.errors import FlywheelError
from feedback.examples import Example
from feedback.settings import CurationSettings


class CurationError(FlywheelError):
    """Curation cannot run as configured (a bad pattern, no reference corpus) or cannot write its output."""


@dataclass(frozen=True, slots=True)
class StageReport:
    """What one stage did: examples in and out, counts by reason, and how long it took."""

    name: str
    enabled: bool
    examples_in: int
    examples_out: int
    details: Mapping[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The stage as a manifest entry."""
        return {
            "name": self.name,
            "enabled": self.enabled,
            "in": self.examples_in,
            "out": self.examples_out,
            "details": dict(sorted(self.details.items())),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class CurationResult:
    """The kept examples (input order) and the report of every stage."""

    examples: tuple[Example, ...]
    stages: tuple[StageReport, ...]
    input_count: int
    input_sources: Mapping[str, int]
    settings: CurationSettings
    model: str
    reference: Mapping[str, Any] | None = None  # sha256 and size of the relevance corpus, when used
