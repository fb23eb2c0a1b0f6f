"""The benchmark modules that tests run, loaded in one place.

benchmarks/ is not a package yet, so a module is loaded from its file. When it
becomes importable, only this module changes.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from support import ROOT


def load_soak() -> ModuleType:
    """benchmarks/soak.py, as the module `soak`."""
    spec = importlib.util.spec_from_file_location(
        "soak", ROOT / "benchmarks" / "soak.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module
