"""The inference worker (a LitServe worker process): ``EmotionAPI`` over the export's ``Predictor``, fed by
``OpportunisticLoop``.

Batching is opportunistic: a worker blocks until a request arrives, then takes whatever else is queued,
up to ``--max-batch-size``, and runs it; it never waits for a batch to fill unless ``--batch-timeout``
asks it to. Under load the queue fills while the model runs, so batches grow by themselves. A batch's
texts are sorted by length and run in small chunks (``settings.BATCH_CHUNK``), so padding to the longest
text of a large batch does not cost more than batching saves.

No ``from __future__ import annotations``: LitServe reads the request/response types from the
annotations of ``decode_request`` / ``encode_response`` at run time.
"""

import signal
import time
from itertools import pairwise
from queue import Empty
from typing import Any

import litserve as ls
import numpy as np
from litserve.loops import BatchedLoop
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.utils import LitAPIStatus, LoopResponseType

from emotions_pl.artifact.predictor import Encoded, Predictor, softmax
from emotions_pl.serve.contract import Prediction, PredictRequest
from emotions_pl.serve.prometheus import metrics
from emotions_pl.serve.settings import BATCH_CHUNK


class OpportunisticLoop(BatchedLoop):
    """LitServe's batched loop, collecting a batch the opportunistic way.

    Block until the first request arrives (never spin), take whatever else is queued without waiting,
    and, only when ``batch_timeout`` > 0, wait up to that long after the first request for more.
    LitServe's own collector waits ``batch_timeout`` from the start even for a lone request, and with 0
    it polls an empty queue in a busy loop.
    """

    def get_batch_requests(self, lit_api: ls.LitAPI, request_queue: Any, transport: Any) -> tuple[list, list]:
        try:
            items = [request_queue.get(timeout=1.0)]
        except Empty:
            return [], []
        deadline = time.monotonic() + lit_api.batch_timeout
        while len(items) < lit_api.max_batch_size and items[-1] != _SENTINEL_VALUE:
            try:
                items.append(request_queue.get_nowait())
            except Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    items.append(request_queue.get(timeout=remaining))
                except Empty:
                    break
        payloads, timed_out = [], []
        apply_timeout = lit_api.request_timeout not in (-1, False)
        for item in items:
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, x_enc = item
            self.put_response(
                transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR
            )
            if apply_timeout and time.monotonic() - timestamp > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, x_enc))
        return payloads, timed_out


class EmotionAPI(ls.LitAPI):
    """Batches whole requests: ``batch`` flattens their texts and tokenizes, ``unbatch`` splits them back."""

    def __init__(
        self,
        model_dir: str,
        variant: str = "fp32",
        max_batch_size: int = 32,
        batch_timeout: float = 0.0,
        num_threads: int | None = None,
    ):
        # The batched loop also for max_batch_size=1, so batch/unbatch always run.
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, loop=OpportunisticLoop())
        self.model_dir, self.variant, self.num_threads = model_dir, variant, num_threads

    def setup(self, device: str) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C hits the group; the main process stops workers
        # No spin-waiting between operators (ONNX Runtime here, OpenMP briefly, through settings.OPENMP_ENV,
        # set by serve()): the HTTP process shares the cores and needs them while the model runs.
        self.predictor = Predictor.from_folder(
            self.model_dir, self.variant, self.num_threads, spin_wait=False
        )
        self.predictor.predict(["warm up the kernels before /health says ok"])
        for label in self.predictor.labels:
            metrics().labels.labels(label)

    def decode_request(self, request: PredictRequest) -> tuple[list[str], bool]:
        return (request.texts or [request.text]), request.texts is None

    def batch(self, inputs: list[tuple[list[str], bool]]) -> tuple[Encoded, list[tuple[int, bool]]]:
        texts = [text for request_texts, _ in inputs for text in request_texts]
        metrics().batch_requests.observe(len(inputs))
        metrics().batch_texts.observe(len(texts))
        return self.predictor.encode(texts, BATCH_CHUNK[self.variant]), [
            (len(request_texts), single) for request_texts, single in inputs
        ]

    def predict(self, x: tuple[Encoded, list[tuple[int, bool]]]) -> tuple[np.ndarray, list[tuple[int, bool]]]:
        encoded, shapes = x
        return softmax(self.predictor.run(encoded)), shapes  # run() is under torch.inference_mode for fp32

    def unbatch(self, output: tuple[np.ndarray, list[tuple[int, bool]]]) -> list[tuple[np.ndarray, bool]]:
        probs, shapes = output
        bounds = np.cumsum([0] + [n for n, _ in shapes]).tolist()
        return [(probs[a:b], single) for (a, b), (_, single) in zip(pairwise(bounds), shapes, strict=True)]

    def encode_response(self, output: tuple[np.ndarray, bool]) -> Prediction | list[Prediction]:
        probs, single = output
        results = [Prediction(**r) for r in self.predictor.results(probs)]
        for r in results:
            metrics().labels.labels(r.label).inc()
        return results[0] if single else results
