"""bench/people.py's scene builder (people pasted with their own masks, moving across a background)
for the tests: one loader, so the benchmark and the tests build the same clips."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def bench_people() -> ModuleType:
    """bench/people.py as a module (loaded once per process)."""
    if "bench_people" in sys.modules:
        return sys.modules["bench_people"]
    spec = importlib.util.spec_from_file_location("bench_people", ROOT / "bench" / "people.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_people"] = module
    spec.loader.exec_module(module)
    return module
