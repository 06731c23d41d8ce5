"""LitServe 0.2.19: a ``LitServer`` with two fixes to its process plumbing.

**Queues.** The request and response queues are pipes (``multiprocessing.Queue``), not proxies into
LitServe's manager process: each request crossed the manager four times (put, get, put, get), each a
round trip through a third process competing for the same cores. The manager still holds the workers'
status and the shutdown event. With ``fast_queue`` responses go through ZeroMQ instead.

**Shutdown race.** LitServe's monitor thread polls ``_shutdown_event``, a proxy into the manager,
every 2 s. Its shutdown terminates the workers and then the manager without stopping that thread, so
a poll that lands late raises ``ConnectionResetError`` (an occasional traceback after Ctrl+C) or sees the
terminated workers and starts a second shutdown. Swapping in a local, already-set event first makes
the monitor's next poll its last.
"""

import multiprocessing as mp
import multiprocessing.queues
import threading
from typing import Any

import litserve as ls
from litserve.transport.process_transport import MPQueueTransport


class _Pipe(mp.queues.Queue):
    """A ``multiprocessing.Queue`` that never makes its process wait at exit for unsent items: a server
    that stops drops what is in flight, instead of hanging on a pipe nobody reads any more."""

    def __init__(self) -> None:
        super().__init__(ctx=mp.get_context("spawn"))  # the workers are spawned; they get it as an argument
        self.cancel_join_thread()

    def __setstate__(self, state: Any) -> None:
        super().__setstate__(state)
        self.cancel_join_thread()


class LitServer(ls.LitServer):
    def _init_manager(self, num_api_servers: int) -> Any:
        manager = super()._init_manager(num_api_servers)
        for path in self.litapi_request_queues:
            self.litapi_request_queues[path] = _Pipe()
        if not self.use_zmq:
            self._transport = MPQueueTransport(manager, [_Pipe() for _ in range(num_api_servers)])
        return manager

    def _perform_graceful_shutdown(
        self, manager: Any, uvicorn_workers: Any, shutdown_reason: str = "normal"
    ) -> None:
        stopped = threading.Event()
        stopped.set()
        self._shutdown_event = stopped
        super()._perform_graceful_shutdown(manager, uvicorn_workers, shutdown_reason)
