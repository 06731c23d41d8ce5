"""``/explain``'s own process and bounded queue (``ExplainQueue``), one per HTTP server process."""

import asyncio
import multiprocessing as mp
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from fastapi import HTTPException

_EXPLAINER: Any = None  # in the explanation process


def _load_explainer(model_dir: str, variant: str, steps: int) -> None:
    """The explanation process's start: lowest CPU priority, Ctrl+C left to the server, the explainer."""
    global _EXPLAINER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(19)
    from transformers.utils import logging as hf_logging

    from emotions_pl.artifact.explain import Explainer

    # No progress bar: it is noise on the server's stderr, and tqdm's lock is a named semaphore that this
    # process, stopped with SIGTERM, could never unlink (a "leaked semaphore" warning at every stop).
    hf_logging.disable_progress_bar()

    _EXPLAINER = Explainer.from_folder(model_dir, variant, steps, num_threads=1)


def _explain(texts: list[str], label: str | None) -> list[dict[str, Any]]:
    return _EXPLAINER.explain(texts, label)


class ExplainQueue:
    """``/explain``'s own bounded queue: at most ``limit`` requests admitted (running or waiting), the next
    answered 429; they run one after the other in one process of their own, at one PyTorch thread and
    the lowest CPU priority (nice 19), so they never starve ``/predict``: the inference worker and the
    HTTP process come first for the cores, and no explanation holds the HTTP process's GIL. (On a thread
    of the HTTP process instead, saturated ``/explain`` left ``/predict`` 37 % of its throughput on 2
    cores: docs/serving.md.)

    ``start`` runs in each HTTP process after LitServe forks it and spawns the explanation process, which
    loads the explainer before the HTTP server accepts requests. A request whose client goes away while
    it waits is dropped from the queue; one already running finishes, and frees its place then.
    """

    def __init__(self, model_dir: str, variant: str, steps: int, limit: int):
        self.model_dir, self.variant, self.steps, self.limit = model_dir, variant, steps, limit
        self.admitted = 0
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Spawn the process and wait for its explainer: the HTTP server takes no request before (a first
        /explain would otherwise wait for the load), and a load that fails stops the server."""
        self._pool = ProcessPoolExecutor(
            1,
            mp_context=mp.get_context("spawn"),
            initializer=_load_explainer,
            initargs=(self.model_dir, self.variant, self.steps),
        )
        await asyncio.wrap_future(self._pool.submit(int))

    def stop(self) -> None:
        """Stop the explanation process (a running explanation is not waited for), then the pool: its
        queues' semaphores are named system-wide objects, unlinked only when the pool lets them go."""
        if self._pool is None:
            return
        for child in mp.active_children():  # in this HTTP process: only the explanation process
            child.terminate()
            child.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)  # its thread sees the process gone, and ends
        self._pool = None

    def _release(self, _: Any) -> None:
        self.admitted -= 1

    async def explain(self, texts: list[str], label: str | None) -> list[dict[str, Any]]:
        if self._pool is None:
            raise RuntimeError("ExplainQueue.start() was not called in this process")
        if self.admitted >= self.limit:
            raise HTTPException(
                429, f"/explain is busy: {self.limit} requests are running or waiting; retry later"
            )
        self.admitted += 1
        job = self._pool.submit(_explain, texts, label)
        loop = asyncio.get_running_loop()
        job.add_done_callback(lambda done: loop.call_soon_threadsafe(self._release, done))
        return await asyncio.wrap_future(job)  # cancelled with the request: a waiting job never runs
