"""The functions told of the job store's changes (`umx.web.jobs.JobStore.subscribe`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Listener = Callable[[dict[str, Any]], None]


class Listeners:
    """A set of listeners, each called with every record told, in the thread that tells it.

    Threads tell their own changes, so two records may reach a listener in another order than
    they were made: the records carry a `revision` that says which is the newer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def add(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every record told from now on; returns the function that stops
        it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                self._listeners.remove(listener)

        return remove

    def tell(self, record: dict[str, Any]) -> None:
        """Call every listener with `record`."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(record)
