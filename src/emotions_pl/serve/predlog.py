"""Prediction log for monitoring: one jsonl record per predicted text, written off the request path.

Requests only enqueue the raw request/response bytes; a background listener thread parses them and
writes rotating files, so logging costs a request a queue put. Records hold the text's length,
the predicted label and score, and the request latency; the text itself only when asked for.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import time
import uuid
from datetime import UTC, datetime
from logging.handlers import QueueListener, RotatingFileHandler
from pathlib import Path

from emotions_pl import schema

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5


class _Exchange:
    """One /predict exchange; turned into jsonl lines only when the listener formats it."""

    def __init__(self, request: bytes, response: bytes, latency_s: float, log_text: bool, variant: str):
        self.request, self.response, self.latency_s = request, response, latency_s
        self.log_text, self.variant = log_text, variant
        self.time = time.time()

    def __str__(self) -> str:
        body = json.loads(self.request)
        texts = body["texts"] if body.get("texts") is not None else [body["text"]]
        predictions = json.loads(self.response)
        predictions = predictions if isinstance(predictions, list) else [predictions]
        common = {
            "ts": datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds"),
            "request_id": uuid.uuid4().hex[:16],
            "n_texts": len(texts),
            "latency_ms": round(self.latency_s * 1000, 3),
            "variant": self.variant,
        }
        lines = []
        for index, (text, pred) in enumerate(zip(texts, predictions, strict=True)):
            record = {
                **common,
                "index": index,
                schema.LOG_TEXT_CHARS: len(text),
                schema.LABEL: pred[schema.LABEL],
                schema.SCORE: round(pred[schema.SCORE], 6),
            }
            if self.log_text:
                record["text"] = text
            lines.append(json.dumps(record, ensure_ascii=False))
        return "\n".join(lines)


class PredictionLog:
    """Rotating ``predictions-<pid>.jsonl`` in ``log_dir``; ``start`` it in the serving process."""

    def __init__(
        self,
        log_dir: str | Path,
        log_text: bool = False,
        variant: str = "fp32",
        max_bytes: int = MAX_BYTES,
        backups: int = BACKUPS,
    ):
        self.log_dir = Path(log_dir)
        self.log_text, self.variant = log_text, variant
        self.max_bytes, self.backups = max_bytes, backups
        self._queue: queue.SimpleQueue | None = None
        self._listener: QueueListener | None = None
        self._handler: RotatingFileHandler | None = None

    @property
    def path(self) -> Path:
        return self.log_dir / f"predictions-{os.getpid()}.jsonl"

    def start(self) -> None:
        """Open the file and start the writer thread (after any fork: threads do not survive one)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._queue = queue.SimpleQueue()
        self._handler = RotatingFileHandler(
            self.path, maxBytes=self.max_bytes, backupCount=self.backups, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._listener = QueueListener(self._queue, self._handler)
        self._listener.start()

    def put(self, request: bytes, response: bytes, latency_s: float) -> None:
        if self._queue is not None:
            record = logging.makeLogRecord(
                {
                    "msg": _Exchange(request, response, latency_s, self.log_text, self.variant),
                    "levelno": logging.INFO,
                }
            )
            self._queue.put_nowait(record)

    def stop(self) -> None:
        """Write everything still queued, then close the file."""
        if self._listener is not None:
            self._listener.stop()
            self._handler.close()
            self._listener = self._queue = self._handler = None
