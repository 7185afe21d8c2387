"""The type check in the test command (issue 13): mypy over the framework-free core
and the framework adapter protocol, which also checks that both adapter modules
implement it (``backends/_protocol.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_mypy_core_and_the_adapter_protocol():
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "src/derivs/core", "src/derivs/backends/_protocol.py",
         "--ignore-missing-imports", "--follow-imports=silent", "--no-incremental"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
