"""Retraining in the background after review decisions.

The app answers a reviewer at once and asks a :class:`BackgroundRetrainer` to learn from the
decision; the retrain (``WorkspaceService.retrain``, then a fresh question queue) runs in a
worker thread, one run at a time. Requests that arrive while a run is going are folded into
one more run after it, so a reviewer answering ten questions in a minute causes at most two
retrains, the last of which has seen every answer. This is the loop ``simulate-review``
measures (answer, retrain, ask), without making the reviewer wait for the retrain.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protoatlas.service.workspace import WorkspaceService

log = logging.getLogger(__name__)

#: Runs ``fn(**kwargs)``; the web app passes its GPU-aware engine call.
Runner = Callable[..., Any]


def _direct(fn: Callable[..., Any], **kwargs: Any) -> Any:
    return fn(**kwargs)


class BackgroundRetrainer:
    """One retrain at a time in a daemon thread; extra requests coalesce into one rerun."""

    def __init__(
        self,
        service: WorkspaceService,
        *,
        runner: Runner = _direct,
        on_busy: Callable[[bool], None] | None = None,
    ) -> None:
        self.service = service
        self._runner = runner
        self._on_busy = on_busy or (lambda busy: None)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pending = False
        #: Finished runs, the model version of the last one (None: nothing to learn from)
        #: and the error of the last one (None when it succeeded).
        self.runs = 0
        self.last_version: int | None = None
        self.last_error: str | None = None

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._thread is not None

    def request(self) -> bool:
        """Ask for a retrain. True: a run started now; False: one is running, and one more
        run will follow it."""
        with self._lock:
            if self._thread is not None:
                self._pending = True
                return False
            self._pending = False
            self._thread = threading.Thread(
                target=self._loop, name="protoatlas-retrain", daemon=True
            )
            self._thread.start()
            return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no run is going or due (True) or ``timeout`` seconds passed (False)."""
        while True:
            with self._lock:
                thread = self._thread
            if thread is None:
                return True
            thread.join(timeout)
            if thread.is_alive():
                return False

    def _loop(self) -> None:
        while True:
            self._on_busy(True)
            try:
                self.last_version = self._runner(self.service.retrain, actor="model")
                self.service.refresh_suggestions()
                self.last_error = None
            except Exception as exc:  # reported by the app; a later request tries again
                log.exception("background retrain failed")
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self.runs += 1
                self._on_busy(False)
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
                self._pending = False
