"""Running one check in several threads at once, with every thread's failure
reported (an exception in a thread would otherwise only be printed)."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_in_threads(work: Callable[[int], None], count: int) -> None:
    """``work(k)`` for ``k < count``, each in its own thread, started together;
    raises the first failure after all have finished."""
    errors: list[BaseException] = []

    def guarded(k):
        try:
            work(k)
        except BaseException as e:  # noqa: BLE001  (re-raised below)
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise AssertionError(f"{len(errors)} of {count} threads failed") from errors[0]
