"""Run every benchmark in this folder (``make bench``)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).parent
    sys.path.insert(0, str(here.parents[1]))
    for bench in sorted(here.glob("bench_*.py")):
        print(f"== {bench.stem}")
        runpy.run_path(str(bench), run_name="__main__")
        print()
