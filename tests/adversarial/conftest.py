"""Every attack here runs against the PyTorch family programs' replayed path
(NOTE [replay]): signatures are traced on their first call, so a second call
replays. The rest of the suite mostly interprets (its operators are called once or
twice), so both paths are attacked."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def replay_at_once(monkeypatch):
    from derivs.backends.torch_engine import _replay

    monkeypatch.setattr(_replay, "REPLAY_AFTER", 0)
