"""What a server runs with: the fixed request limits and tuning, and the ``Settings`` of one run.

No server stack here (no LitServe, FastAPI or pydantic): ``options`` (the flags, parsed before LitServe
is imported) and the server's modules share these without importing each other. ``options`` turns the
flags into a ``Settings``; ``server.serve`` takes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from emotions_pl.artifact.explain import DEFAULT_STEPS

# Documented request limits (docs/serving.md, /openapi.json); each violation is a 4xx JSON answer.
MAX_TEXT_CHARS = 2000
MAX_TEXTS = 64
# The largest request the schema allows is 64 texts of 2,000 characters; written as JSON with every
# character \u-escaped as a surrogate pair (12 bytes each) it is 1,536,203 bytes. 2 MiB holds it with room
# for formatting, so no request the schema allows is refused for its size.
MAX_BODY_BYTES = 2 * 1024 * 1024
# A body over the limit is read and discarded up to DISCARD_BYTES within BODY_DEADLINE_S, so a client that
# sends it all before reading (urllib, requests) gets a readable 413; past either bound the server
# answers and closes the connection at once.
DISCARD_BYTES = 64 * 1024 * 1024
BODY_DEADLINE_S = 10.0
API_KEY_ENV = "LIT_SERVER_API_KEY"
# /explain: a request holds 1 to MAX_EXPLAIN_TEXTS texts; at most --explain-queue requests are admitted
# (running or waiting), the next is answered 429. They run one at a time in a process of their own
# (explain_queue.ExplainQueue), at the lowest CPU priority.
MAX_EXPLAIN_TEXTS = 8
EXPLAIN_QUEUE = 8

# The worker runs a batch's texts, sorted by length, in chunks of this many: each chunk pads only to its
# own longest text. On MiniLM-L6, 2 cores, 32 random test texts: int8 2.5x faster in chunks of 4 than as
# one padded batch (and faster than one text at a time), fp32 1.6x in chunks of 8 (docs/serving.md).
BATCH_CHUNK = {"int8": 4, "onnx": 4, "fp32": 8}
# PyTorch's OpenMP threads between operators: spin this many turns, then sleep (libgomp reads it when
# OpenMP starts). Spinning long (libgomp's default) starved the HTTP process on 2 shared cores (fp32 at
# a tenth of the speed); sleeping at once (PASSIVE alone) pays a wake-up per operator. fp32, 2 threads,
# quiet: bare batch 1 127 vs 89 texts/s, batch 32 219 vs 189; server c=16 146-155 vs 118-139 req/s.
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}


def set_openmp_waiting() -> None:
    """``OPENMP_ENV``, before torch starts OpenMP, unless the user set either variable."""
    if not any(name in os.environ for name in OPENMP_ENV):
        os.environ.update(OPENMP_ENV)


@dataclass(frozen=True)
class Settings:
    """One server's settings: the flags, with the defaults that depend on the machine and the export
    folder already chosen (``options.make_settings``). ``said`` holds the sentences that say what was chosen
    and why, printed at start."""

    model: str
    variant: str
    variant_reason: str
    threads: int
    said: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    batch_timeout: float = 0.0
    workers_per_device: int = 1
    timeout: float = 30
    api_key: str | None = field(default=None, repr=False)  # from --api-key-env; None: no key needed
    log_dir: str | None = None
    log_text: bool = False
    explain_queue: int = EXPLAIN_QUEUE
    explain_steps: int = DEFAULT_STEPS
    fast_queue: bool = False
    log_level: str = "warning"
