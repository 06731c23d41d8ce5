"""LitServe 0.2.19: a ``LitServer`` whose worker monitor stops before the shutdown it would race.

LitServe's monitor thread polls ``_shutdown_event``, a proxy into the multiprocessing manager, every
2 s. Its shutdown terminates the workers and then the manager without stopping that thread, so a poll
that lands late raises ``ConnectionResetError`` (an occasional traceback after Ctrl+C) or sees the
terminated workers and starts a second shutdown. Swapping in a local, already-set event first makes
the monitor's next poll its last.
"""

import threading
from typing import Any

import litserve as ls


class LitServer(ls.LitServer):
    def _perform_graceful_shutdown(
        self, manager: Any, uvicorn_workers: Any, shutdown_reason: str = "normal"
    ) -> None:
        stopped = threading.Event()
        stopped.set()
        self._shutdown_event = stopped
        super()._perform_graceful_shutdown(manager, uvicorn_workers, shutdown_reason)
