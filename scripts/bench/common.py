"""What the benchmarks share: paths, ``--smoke`` and the output path, the asyncio load client, a server
run under load, the bare-model bound, machine info, the table printer and the JSON writer.

Every benchmark runs from the repository root as a module (``python -m scripts.bench.serve ...``), so
the root is on ``sys.path``: ``scripts.bench`` and the tests' server helper (``tests.helpers``) import
with no path edit, and ``emotions_pl`` is the installed (editable) package.

The bare-model bound has one definition, here: calls of ``CALL_TEXTS`` random test texts through the
project's ``Predictor`` (tokenize + model), sorted by length and run ``k`` texts per forward pass, for
each ``k`` in ``CHUNKS``; the median call gives texts/s per ``k``, and the bound is the best of them.
``python -m scripts.bench.common --model DIR --variant V ...`` is its worker, run in a fresh process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("EMOTIONS_DATA_DIR", REPO.parent / "shared" / "data" / "emotion"))
DEFAULT_DATA = DATA_DIR / "test.jsonl"
SAMPLE_DIR = REPO / "src" / "emotions_pl" / "sample"
SAMPLE_DATA = SAMPLE_DIR / "test.jsonl"
RESULTS = REPO / "results" / "bench"
SMOKE_EXPERIMENT = "configs/experiment/smoke.yaml"
MODEL_HELP = "export folder (python -m emotions_pl export ... --int8); --smoke: a tiny one"
CLIENT_NOTE = (
    "the load client runs on the same {cpus} cores as the server (it takes CPU the server could use); "
    "the baseline pays the same cost"
)
CHUNKS = (1, 4, 8, 32)
CALL_TEXTS = 32  # texts per timed call: a full batch of the server (serve --max-batch-size)
WARMUP_CALLS = 2
MIN_CALLS = 3
BOUND_NOTE = (
    f"bare bound = best over chunk sizes {', '.join(map(str, CHUNKS))} of the texts/s of the Predictor "
    f"(tokenize + model; calls of {CALL_TEXTS} random test texts, length-sorted, k per forward pass; the "
    "median call), in a fresh process at the server worker's threads"
)


# -- running a benchmark ---------------------------------------------------------------------------


def parse(
    parser: argparse.ArgumentParser, smoke: Mapping[str, Any], argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse with ``--smoke`` added, which makes ``smoke``'s values the defaults (explicit flags win)."""
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest run (under a minute: a tiny model or the packaged sample); JSON to a temporary "
        "folder unless --output, never to results/bench",
    )
    known, _ = parser.parse_known_args(argv)
    if known.smoke:
        parser.set_defaults(**smoke)
    return parser.parse_args(argv)


def output_path(given: Path | None, name: str, smoke: bool) -> Path:
    """``--output``, else ``results/bench/<name>.json``, or for a smoke run a new temporary folder."""
    if not smoke:
        return given or RESULTS / f"{name}.json"
    path = given or Path(tempfile.mkdtemp(prefix=f"bench-{name}-smoke-")) / f"{name}.json"
    if path.resolve().is_relative_to(RESULTS.resolve()):
        raise SystemExit(f"--smoke never writes into {RESULTS}: its numbers are not results")
    return path


def smoke_export(work: Path) -> Path:
    """The smoke experiment's tiny model (a seconds-long fit on the packaged sample), exported with its
    ONNX and int8 variants into ``work``: the model a smoke run serves when ``--model`` is not given."""
    run, folder = work / "smoke-run", work / "smoke-export"
    print(f"smoke: fitting and exporting the tiny model into {work}", flush=True)
    fit = ["fit", "--config", SMOKE_EXPERIMENT, "--trainer.default_root_dir", str(run)]
    fit += ["--trainer.enable_progress_bar", "false"]
    export = ["export", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--output", str(folder), "--int8"]
    for step in (fit, export):
        proc = subprocess.run(
            [sys.executable, "-m", "emotions_pl", *step], cwd=REPO, capture_output=True, text=True
        )
        if proc.returncode:
            raise SystemExit(f"smoke: emotions_pl {step[0]} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return folder


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags, JSON-ready."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def machine() -> dict[str, Any]:
    """What the numbers depend on: the cores this process may use, torch's threads, the platform, the
    load when the benchmark started (a busy machine reads slow)."""
    import torch

    from emotions_pl.serve import options

    return {
        "cpus": options.available_cores(),
        "os_cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_json(path: Path, report: Mapping[str, Any]) -> None:
    """Temp file and rename (``files.atomic_write_text``): an interrupted run leaves the old report."""
    # Imported here: the data benchmark's child may run an older emotions_pl (--code) without it.
    from emotions_pl.files import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Mapping[str, str] | Sequence[str],
    formats: Mapping[str, str] | None = None,
) -> str:
    """A markdown table padded to read as plain text too. ``columns``: heading -> key, or the keys as
    headings; numbers are right-aligned and formatted by ``formats[key]``, a missing or None value is -."""
    columns = columns if isinstance(columns, Mapping) else {c: c for c in columns}
    formats = formats or {}

    def cell(row: Mapping[str, Any], key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if number(value):
            return format(value, formats.get(key, ""))
        return str(value)

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    cells = [[cell(r, k) for k in columns.values()] for r in rows]
    numeric = [all(number(r[k]) for r in rows if r.get(k) is not None) for k in columns.values()]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if n else "-") for w, n in zip(widths, numeric, strict=True))
    return "\n".join([line(list(columns)), rule + "|", *(line(c) for c in cells)])


# -- the load client -------------------------------------------------------------------------------


def post(host: str, path: str, body: bytes) -> bytes:
    """One HTTP/1.1 POST of a JSON body, keep-alive (the default of HTTP/1.1)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response off a keep-alive connection; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next(
        (int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"), 0
    )
    await reader.readexactly(length)
    return status


async def load(url: str, texts: list[str], concurrency: int, requests: int, seed: int = 0) -> dict[str, Any]:
    """``requests`` single-text POSTs /predict from ``concurrency`` keep-alive connections (no client
    library: a light client leaves the shared cores to the server)."""
    host, port = url.removeprefix("http://").split(":")
    order = random.Random(seed).choices(range(len(texts)), k=requests)
    bodies = [json.dumps({"text": texts[i]}).encode() for i in order]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(requests))

    async def sender() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in counter:
                start = time.perf_counter()
                writer.write(post(host, "/predict", bodies[i]))
                status = await read_response(reader)
                latencies.append(time.perf_counter() - start)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": requests,
        "non_2xx": sum(n for s, n in statuses.items() if not 200 <= s < 300),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "rps": round(requests / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def run_server_bench(
    name: str,
    model: Path | str,
    server_args: list[str],
    texts: list[str],
    log_dir: Path,
    concurrency: Sequence[int],
    requests: int,
    warmup: int,
    command: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """Start ``command --model M --port P SERVER_ARGS`` (default ``serve``), warm it up, load it at each
    concurrency level with at least ``4 x c`` requests, stop it with SIGTERM (checked: exit 0, no process
    left, no traceback). Returns the rows and the server's log."""
    # The tests' server process: imported here, so benchmarks that start no server need no httpx.
    from tests.helpers import SERVE, Server

    server = Server(model, log_dir / f"{name}.log", *server_args, command=command or SERVE, ready_timeout=300)
    rows = []
    try:
        asyncio.run(load(server.url, texts, 4, warmup, seed=99))
        for c in concurrency:
            row = {"server": name, **asyncio.run(load(server.url, texts, c, max(requests, c * 4), seed=c))}
            print(
                f"  {name:<34} c={c:<3} {row['rps']:>8.1f} req/s  p50 {row['p50_ms']:>7.1f} ms"
                f"  non-2xx {row['non_2xx']}",
                flush=True,
            )
            rows.append(row)
    finally:
        try:
            server.stop(signal.SIGTERM)  # a background job (nohup, &) ignores SIGINT
        except (AssertionError, subprocess.TimeoutExpired) as error:  # reported, not fatal to the report
            print(f"  {name}: the server did not stop cleanly: {str(error)[:300]}", flush=True)
            for row in rows:
                row["stop_error"] = str(error)[:300]
    return rows, server.log()


# -- the bare-model bound --------------------------------------------------------------------------


def bare_worker(
    model: Path, variant: str, threads: int, texts: list[str], max_calls: float, seconds: float
) -> dict[str, Any]:
    """The bound in this process, as the server's worker runs the model (``threads`` intra-op threads, no
    spin-waiting). Per chunk size: warm-up calls, then timed calls until ``max_calls`` or ``seconds``
    (at least ``MIN_CALLS``)."""
    from emotions_pl.serve import options

    options.set_openmp_waiting()  # as the server does (before torch starts OpenMP)
    from emotions_pl.artifact.predictor import Predictor

    predictor = Predictor.from_folder(model, variant, threads, spin_wait=False)
    out: dict[str, Any] = {"variant": variant, "threads": threads, "texts_per_call": CALL_TEXTS}
    out |= {"server_chunk": options.BATCH_CHUNK[variant], "chunk_texts_per_s": {}, "calls": {}}
    for chunk in CHUNKS:
        rng = random.Random(0)  # the same calls for every chunk size, folder and variant
        for _ in range(WARMUP_CALLS):
            predictor.run(predictor.encode(rng.choices(texts, k=CALL_TEXTS), chunk))
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < max_calls and (len(times) < MIN_CALLS or time.perf_counter() - start < seconds):
            call = rng.choices(texts, k=CALL_TEXTS)  # with replacement: the sample has fewer texts
            began = time.perf_counter()
            predictor.run(predictor.encode(call, chunk))
            times.append(time.perf_counter() - began)
        out["chunk_texts_per_s"][str(chunk)] = round(CALL_TEXTS / statistics.median(times), 1)
        out["calls"][str(chunk)] = len(times)
    best = max(out["chunk_texts_per_s"], key=out["chunk_texts_per_s"].get)
    out["best_chunk"], out["bound_texts_per_s"] = int(best), out["chunk_texts_per_s"][best]
    return out


def bare_bound(
    model: Path | str,
    variant: str,
    threads: int,
    data: Path,
    max_calls: float = math.inf,
    seconds: float = math.inf,
) -> dict[str, Any]:
    """``bare_worker`` in a fresh process (no warm caches or thread pools shared with other rows)."""
    command = [sys.executable, "-m", "scripts.bench.common", "--model", str(model), "--variant", variant]
    command += ["--threads", str(threads), "--data", str(data)]
    command += ["--max-calls", str(max_calls), "--seconds", str(seconds)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"bare worker {variant} {model}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description="the bare-model bound's worker (bare_bound runs it)")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--data", type=Path, required=True, help="test jsonl (text)")
    p.add_argument("--max-calls", type=float, default=math.inf)
    p.add_argument("--seconds", type=float, default=math.inf)
    args = p.parse_args()
    if math.isinf(args.max_calls) and math.isinf(args.seconds):
        p.error("give --max-calls or --seconds")
    texts = [r["text"] for r in read_jsonl(args.data)]
    bound = bare_worker(args.model, args.variant, args.threads, texts, args.max_calls, args.seconds)
    print(json.dumps(bound))
    return 0


if __name__ == "__main__":
    sys.exit(main())
