"""Serving benchmark: this LitServe server (fp32, a faster variant) vs a naive FastAPI + pipeline baseline.

Each server runs as its own process on 127.0.0.1, one after the other, on the same machine and in the
same run; an asyncio client sends single-text requests at each concurrency level and records
requests/s and latency percentiles. Optional parts: the prediction log's overhead (the faster
variant with and without --log-dir) and the test-split accuracy of fp32 vs the faster variant.

    python scripts/bench_serve.py --model models/emotions            # throughput + log overhead
    python scripts/bench_serve.py --model models/emotions --accuracy  # + accuracy on the test split
    python scripts/bench_serve.py --model models/emotions --no-throughput --accuracy

Writes JSON (default bench/serve.json) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the server process helper is the tests' own
from helpers import SERVE, Server  # noqa: E402

DEFAULT_DATA = (
    Path(os.environ.get("EMOTIONS_DATA_DIR", REPO.parent / "shared" / "data" / "emotion")) / "test.jsonl"
)
SAMPLE_DATA = REPO / "src" / "emotions_pl" / "sample" / "test.jsonl"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def load(url: str, texts: list[str], concurrency: int, requests: int) -> dict[str, Any]:
    """``requests`` single-text POSTs from ``concurrency`` concurrent senders; throughput and latency."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def sender() -> None:
            nonlocal errors
            for i in counter:
                start = time.perf_counter()
                response = await client.post("/predict", json={"text": texts[i % len(texts)]})
                latencies.append(time.perf_counter() - start)
                errors += response.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": errors,
        "rps": round(requests / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def run_server_bench(
    name: str,
    server_args: list[str],
    texts: list[str],
    args: argparse.Namespace,
    log_dir: Path,
    command: tuple[str, ...] = SERVE,
) -> list[dict[str, Any]]:
    """Start ``command --model M --port P SERVER_ARGS``, load it at each concurrency level, stop it
    with SIGINT (checked: exit 0, no process left, no traceback in its log)."""
    server = Server(args.model, log_dir / f"{name}.log", *server_args, command=command, ready_timeout=300)
    rows = []
    try:
        asyncio.run(load(server.url, texts, 4, args.warmup))
        for concurrency in args.concurrency:
            requests = max(args.requests, concurrency * 4)
            row = {"server": name, **asyncio.run(load(server.url, texts, concurrency, requests))}
            print(
                f"  {name:<28} c={concurrency:<3} {row['rps']:>8.1f} req/s  p50 {row['p50_ms']:.1f} ms",
                flush=True,
            )
            rows.append(row)
    finally:
        server.stop()
    return rows


def serve_args(args: argparse.Namespace, variant: str, *extra: str) -> list[str]:
    """``emotions_pl serve`` flags beside --model and --port."""
    return [
        "--variant",
        variant,
        "--max-batch-size",
        str(args.max_batch_size),
        "--batch-timeout",
        str(args.batch_timeout),
        "--threads",
        str(args.threads),
        *extra,
    ]


def baseline_server(model: str, port: int, threads: int) -> None:
    """The original project's style: FastAPI + transformers.pipeline, one request at a time, no batching."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    torch.set_num_threads(threads)
    classify = pipeline("text-classification", model=model, top_k=None)
    app = FastAPI()

    @app.post("/predict")
    async def predict(body: dict) -> dict:  # async + blocking call: requests are served one at a time
        scores = {d["label"]: d["score"] for d in classify([body["text"]], truncation=True)[0]}
        label = max(scores, key=scores.get)
        return {"label": label, "score": scores[label], "scores": scores}

    @app.get("/health")
    async def health() -> str:
        return "ok"

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def accuracy(model: str, variants: list[str], data: Path, threads: int) -> dict[str, Any]:
    """Test-split accuracy per variant and the faster variants' loss against fp32, in points."""
    from emotions_pl.artifact.predictor import Predictor

    rows = read_jsonl(data)
    texts, labels = [r["text"] for r in rows], np.array([int(r["label"]) for r in rows])
    out: dict[str, Any] = {"data": str(data), "n": len(rows)}
    predictions = {}
    for variant in variants:
        start = time.perf_counter()
        predictions[variant] = Predictor.from_folder(model, variant, threads).predict_proba(texts).argmax(-1)
        out[variant] = {
            "accuracy": round(float((predictions[variant] == labels).mean()), 4),
            "seconds": round(time.perf_counter() - start, 1),
        }
    for variant in variants[1:]:
        out[variant]["loss_points_vs_fp32"] = round(
            100 * (out["fp32"]["accuracy"] - out[variant]["accuracy"]), 2
        )
        out[variant]["agreement_with_fp32"] = round(
            float((predictions[variant] == predictions["fp32"]).mean()), 4
        )
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'server':<28} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['server']:<28} {r['concurrency']:>4} {r['rps']:>8.1f} {r['p50_ms']:>8.1f} "
            f"{r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>6}"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="export folder (python -m emotions_pl export ... --int8)")
    p.add_argument("--variant", default="int8", choices=["onnx", "int8"], help="the faster variant (b)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument(
        "--requests", type=int, default=200, help="requests per concurrency level (at least 4 x c)"
    )
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout", type=float, default=0.005)
    p.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 1) - 1),
        help="CPU threads of every server's model (same for all; default cores - 1)",
    )
    p.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="jsonl with text (and label for --accuracy)"
    )
    p.add_argument("--output", type=Path, default=REPO / "bench" / "serve.json")
    p.add_argument("--no-throughput", action="store_true", help="skip the server runs")
    p.add_argument("--no-log-overhead", action="store_true", help="skip the prediction-log on/off comparison")
    p.add_argument(
        "--accuracy", action="store_true", help="test-split accuracy of fp32 vs the faster variant"
    )
    p.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline_server:
        baseline_server(args.model, args.port, args.threads)
        return 0

    data = args.data if args.data.is_file() else SAMPLE_DATA
    texts = [r["text"] for r in read_jsonl(data)]
    info = json.loads((Path(args.model) / "export_info.json").read_text())
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "model": {
            "path": str(args.model),
            "name": info.get("name"),
            "base_model": info.get("base_model"),
            "sha256": info["source_checkpoint"]["sha256"],
        },
        "settings": {k: v for k, v in vars(args).items() if k not in {"baseline_server", "port"}}
        | {"data": str(data)},
    }
    report["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in report["settings"].items()}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        logs = Path(tmp)
        if not args.no_throughput:
            baseline = (sys.executable, __file__, "--baseline-server")
            for name, server_args, command in [
                ("litserve-fp32", serve_args(args, "fp32"), SERVE),
                (f"litserve-{args.variant}", serve_args(args, args.variant), SERVE),
                ("baseline-fastapi-pipeline", ["--threads", str(args.threads)], baseline),
            ]:
                rows += run_server_bench(name, server_args, texts, args, logs, command)
            report["results"] = rows
            at16 = {r["server"]: r["rps"] for r in rows if r["concurrency"] == 16}
            if "baseline-fastapi-pipeline" in at16:
                base = at16.pop("baseline-fastapi-pipeline")
                report["speedup_vs_baseline_c16"] = {k: round(v / base, 2) for k, v in at16.items()}
                report["floor_3x_at_c16_met"] = max(report["speedup_vs_baseline_c16"].values()) >= 3
        if not args.no_log_overhead:
            level = [16] if 16 in args.concurrency else args.concurrency[-1:]
            sub = argparse.Namespace(**{**vars(args), "concurrency": level})
            overhead = []
            for name, extra in [("log-off", ()), ("log-on", ("--log-dir", str(logs / "predlog")))]:
                overhead += run_server_bench(
                    f"litserve-{args.variant}-{name}",
                    serve_args(args, args.variant, *extra),
                    texts,
                    sub,
                    logs,
                )
            written = sum(1 for f in (logs / "predlog").glob("predictions-*.jsonl*") for _ in f.open())
            change = round(100 * (overhead[1]["rps"] / overhead[0]["rps"] - 1), 1)
            report["log_overhead"] = {"rows": overhead, "records_written": written, "rps_change_pct": change}
            rows += overhead
    if args.accuracy:
        report["accuracy"] = accuracy(str(args.model), ["fp32", args.variant], args.data, args.threads)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if rows:
        print(table(rows))
    for key in ("speedup_vs_baseline_c16", "floor_3x_at_c16_met", "accuracy"):
        if key in report:
            print(f"{key}: {json.dumps(report[key])}")
    if "log_overhead" in report:
        print(
            f"prediction log overhead at c={report['log_overhead']['rows'][0]['concurrency']}: "
            f"{report['log_overhead']['rps_change_pct']:+.1f}% req/s"
        )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
