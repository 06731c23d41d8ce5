"""Serving benchmark: `serve` (its defaults, and each variant) vs a naive FastAPI + pipeline baseline,
with the bare model's throughput as the bound, all measured in one run on this machine.

Each server runs as its own process on 127.0.0.1, one after the other. A light asyncio HTTP/1.1 client
(keep-alive connections, no client library) sends single-text requests drawn from the test split at
each concurrency level and records requests/s and latency percentiles. The client runs on the same
cores as the server: on a 2-core machine it takes CPU the server could have used, so every number
here is a lower bound of what a remote client would see (the baseline pays the same cost).

    python scripts/bench_serve.py --model models/emotions                      # the whole report
    python scripts/bench_serve.py --model models/emotions --requests 100 --long-run 0 --no-baseline

Parts (each can be skipped): the default server (``serve --model M``, no other flag) and one server per
exported variant (``--variant V``); the baseline at stock torch threads and at 1 thread; the bare model
(``Predictor``, batch 1 and batch 32, at the thread count the server's worker uses) in a fresh process;
``--long-run N`` requests at c=64 on the default server (0 non-2xx expected); the prediction log's
overhead (``--log-overhead``). Prints tables, the ratios and the issue's floors; writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the server process helper is the tests' own
sys.path.insert(0, str(REPO / "src"))
from emotions_pl.artifact.predictor import VARIANT_FILES  # noqa: E402
from emotions_pl.serve import options  # noqa: E402
from helpers import SERVE, Server  # noqa: E402

DEFAULT_DATA = (
    Path(os.environ.get("EMOTIONS_DATA_DIR", REPO.parent / "shared" / "data" / "emotion")) / "test.jsonl"
)
SAMPLE_DATA = REPO / "src" / "emotions_pl" / "sample" / "test.jsonl"
BASELINE = "baseline"
CLIENT_NOTE = (
    "the load client runs on the same {cpus} cores as the server (it takes CPU the server could use); "
    "the baseline pays the same cost"
)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- the load client --------------------------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next(
        (int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"), 0
    )
    await reader.readexactly(length)
    return status


async def load(url: str, texts: list[str], concurrency: int, requests: int, seed: int = 0) -> dict[str, Any]:
    """``requests`` single-text POSTs /predict from ``concurrency`` keep-alive connections."""
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
                body = bodies[i]
                head = (
                    f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                start = time.perf_counter()
                writer.write(head + body)
                status = await _read_response(reader)
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
    server_args: list[str],
    texts: list[str],
    args: argparse.Namespace,
    log_dir: Path,
    command: tuple[str, ...] = SERVE,
    concurrency: list[int] | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """Start ``command --model M --port P SERVER_ARGS``, load it at each concurrency level, stop it with
    SIGTERM (checked: exit 0, no process left, no traceback). Returns the rows and the server's log."""
    server = Server(args.model, log_dir / f"{name}.log", *server_args, command=command, ready_timeout=300)
    rows = []
    try:
        asyncio.run(load(server.url, texts, 4, args.warmup, seed=99))
        for c in concurrency or args.concurrency:
            requests = max(args.requests, c * 4)
            row = {"server": name, **asyncio.run(load(server.url, texts, c, requests, seed=c))}
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


# -- the baseline and the bare model -----------------------------------------------------------------


def baseline_server(model: str, port: int, threads: int | None) -> None:
    """The original project's style: FastAPI + transformers.pipeline, one text per call, no batching."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    if threads:
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

    # uvicorn stops gracefully on SIGTERM, then raises the signal again to the handler it found: exit 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def bare_worker(model: str, variant: str, threads: int, texts: list[str], seconds: float) -> dict[str, Any]:
    """Texts/s of the project's Predictor at batch 1 and batch 32 (random single test texts), as the server's
    worker runs them: tokenize + model, length-sorted chunks of ``BATCH_CHUNK``, ``threads`` intra-op
    threads, no spin-waiting. Runs in its own process."""
    from emotions_pl.artifact.predictor import Predictor

    options.set_openmp_waiting()  # as the server does (before torch starts OpenMP)
    predictor = Predictor.from_folder(model, variant, threads, spin_wait=False)
    chunk = options.BATCH_CHUNK[variant]  # the server's worker runs a batch in length-sorted chunks
    rng = random.Random(0)
    predictor.predict(texts[:64])  # warm up
    out: dict[str, Any] = {"variant": variant, "threads": threads}
    for batch in (1, 32):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            texts_in = rng.sample(texts, batch)
            predictor.run(predictor.encode(texts_in, chunk))
            done += batch
        out[f"batch{batch}_texts_per_s"] = round(done / (time.perf_counter() - start), 1)
    out["bound_texts_per_s"] = max(out["batch1_texts_per_s"], out["batch32_texts_per_s"])
    return out


def bare(args: argparse.Namespace, variant: str, threads: int, data: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--bare-worker",
            "--model",
            str(args.model),
            "--variant",
            variant,
            "--threads",
            str(threads),
            "--data",
            str(data),
            "--bare-seconds",
            str(args.bare_seconds),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def accuracy(model: str, variants: list[str], data: Path) -> dict[str, Any]:
    """Test-split accuracy per variant and its loss against fp32, in points."""
    from emotions_pl.artifact.predictor import Predictor

    rows = read_jsonl(data)
    texts, labels = [r["text"] for r in rows], np.array([int(r["label"]) for r in rows])
    out: dict[str, Any] = {"data": str(data), "n": len(rows)}
    predictions = {v: Predictor.from_folder(model, v).predict_proba(texts).argmax(-1) for v in variants}
    for v in variants:
        out[v] = {"accuracy": round(float((predictions[v] == labels).mean()), 4)}
        if v != "fp32" and "fp32" in predictions:
            out[v]["loss_points_vs_fp32"] = round(100 * (out["fp32"]["accuracy"] - out[v]["accuracy"]), 2)
            out[v]["agreement_with_fp32"] = round(float((predictions[v] == predictions["fp32"]).mean()), 4)
    return out


# -- report --------------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    head = "| server | conc | req/s | p50 ms | p95 ms | p99 ms | non-2xx |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['concurrency']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['non_2xx']} |"
        )
    return "\n".join(lines)


def _at(rows: list[dict[str, Any]], server: str, c: int, key: str) -> float | None:
    return next((r[key] for r in rows if r["server"] == server and r["concurrency"] == c), None)


def floors(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The serving issue's floors, from this run's numbers."""
    rows, bound = report["results"], report.get("bare", {})
    default, chosen = report.get("default_server"), report.get("default_variant")
    baselines = [r["server"] for r in rows if r["server"].startswith(BASELINE)]
    if not baselines:
        return []

    def base(c: int, key: str, best: Any) -> float | None:
        values = [v for b in baselines if (v := _at(rows, b, c, key)) is not None]
        return best(values) if values else None

    out = []

    def floor(what: str, value: float | None, target: float | None, ok: bool | None) -> None:
        out.append({"what": what, "value": value, "target": target, "met": ok})

    if default:
        p50, base_p50 = _at(rows, default, 1, "p50_ms"), base(1, "p50_ms", min)
        if p50 is not None and base_p50 is not None:
            floor("default server, c=1 p50 <= baseline p50 (ms)", p50, base_p50, p50 <= base_p50)
        rps16, base16 = _at(rows, default, 16, "rps"), base(16, "rps", max)
        if rps16 is not None and base16:
            floor(
                "default server, c=16 req/s >= 3x baseline", rps16, round(3 * base16, 1), rps16 >= 3 * base16
            )
        bound_rps = (bound.get(chosen) or {}).get("bound_texts_per_s")
        if rps16 is not None and bound_rps:
            target = round(0.65 * bound_rps, 1)
            floor(
                f"default server, c=16 req/s >= 65% of the bare bound ({chosen})",
                rps16,
                target,
                rps16 >= target,
            )
        rps64 = _at(rows, default, 64, "rps")
        if rps64 is not None and bound_rps:
            target = round(0.75 * bound_rps, 1)
            floor(
                f"default server, c=64 req/s >= 75% of the bare bound ({chosen})",
                rps64,
                target,
                rps64 >= target,
            )
    fp16, base16 = _at(rows, "serve --variant fp32", 16, "rps"), base(16, "rps", max)
    if fp16 is not None and base16:
        floor("fp32, c=16 req/s >= 1.5x baseline", fp16, round(1.5 * base16, 1), fp16 >= 1.5 * base16)
    if "long_run" in report:
        bad = report["long_run"]["non_2xx"]
        floor(f"{report['long_run']['requests']} requests at c=64: non-2xx", bad, 0, bad == 0)
    return out


def print_report(report: dict[str, Any]) -> None:
    rows = report["results"]
    print()
    print(f"Note: {report['client_note']}.")
    print(table(rows))
    if report.get("bare"):
        print("\nbare model (Predictor, single test texts, tokenize + model), texts/s:")
        print("| variant | threads | batch 1 | batch 32 | bound |")
        print("|---|---:|---:|---:|---:|")
        for v, b in report["bare"].items():
            print(
                f"| {v} | {b['threads']} | {b['batch1_texts_per_s']:.1f} | {b['batch32_texts_per_s']:.1f} | "
                f"{b['bound_texts_per_s']:.1f} |"
            )
    if report.get("ratios"):
        print("\nratios (server req/s / better baseline req/s; server req/s / bare bound of its variant):")
        print("| server | conc | x baseline | x bare bound |")
        print("|---|---:|---:|---:|")
        for r in report["ratios"]:
            print(f"| {r['server']} | {r['concurrency']} | {r['x_baseline']} | {r['x_bound']} |")
    if report.get("floors"):
        print("\nfloors (issue 12):")
        print("| floor | value | target | met |")
        print("|---|---:|---:|---|")
        for f in report["floors"]:
            print(f"| {f['what']} | {f['value']} | {f['target']} | {'yes' if f['met'] else 'NO'} |")
    if report.get("long_run"):
        lr = report["long_run"]
        print(
            f"\nlong run: {lr['requests']} requests at c={lr['concurrency']} on the default server: "
            f"{lr['rps']} req/s, p50 {lr['p50_ms']} ms, p99 {lr['p99_ms']} ms, statuses {lr['statuses']}"
        )
    if "log_overhead" in report:
        print(f"prediction log overhead at c=16: {report['log_overhead']['rps_change_pct']:+.1f}% req/s")
    if "accuracy" in report:
        print(f"accuracy: {json.dumps(report['accuracy'])}")


def ratios(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows, out = report["results"], []
    variant_of = report["variant_of"]
    for r in rows:
        if r["server"].startswith(BASELINE):
            continue
        bases = [
            b["rps"]
            for b in rows
            if b["server"].startswith(BASELINE) and b["concurrency"] == r["concurrency"]
        ]
        bound = (report.get("bare", {}).get(variant_of.get(r["server"], "")) or {}).get("bound_texts_per_s")
        out.append(
            {
                "server": r["server"],
                "concurrency": r["concurrency"],
                "x_baseline": round(r["rps"] / max(bases), 2) if bases else None,
                "x_bound": round(r["rps"] / bound, 2) if bound else None,
            }
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="export folder (python -m emotions_pl export ... --int8)")
    p.add_argument("--variants", nargs="*", help="variants to serve one by one (default: all exported)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument(
        "--requests", type=int, default=400, help="requests per concurrency level (at least 4 x c)"
    )
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument(
        "--long-run", type=int, default=20000, help="requests at c=64 on the default server (0: skip)"
    )
    p.add_argument("--bare-seconds", type=float, default=4.0, help="seconds per bare-model measurement")
    p.add_argument("--serve-arg", action="append", default=[], help="extra flag for every `serve` (repeat)")
    p.add_argument("--no-default", action="store_true", help="skip the default server")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline")
    p.add_argument("--no-bare", action="store_true", help="skip the bare-model bound")
    p.add_argument(
        "--log-overhead", action="store_true", help="the prediction log on vs off (default server)"
    )
    p.add_argument("--accuracy", action="store_true", help="score every variant on the test split")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="test jsonl (text, label)")
    p.add_argument("--output", type=Path, default=REPO / "bench" / "serve.json")
    p.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    data = args.data if args.data.is_file() else SAMPLE_DATA
    texts = [r["text"] for r in read_jsonl(data)]
    if args.baseline_server:
        baseline_server(args.model, args.port, args.threads)
        return 0
    if args.bare_worker:
        print(json.dumps(bare_worker(args.model, args.variant, args.threads, texts, args.bare_seconds)))
        return 0

    info = json.loads((Path(args.model) / "export_info.json").read_text())
    exported = [v for v in ("fp32", "onnx", "int8") if (Path(args.model) / VARIANT_FILES[v]).is_file()]
    variants = args.variants if args.variants is not None else exported
    chosen, why = options.choose_variant(args.model, info)
    cores = options.available_cores()
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": cores, "platform": platform.platform(), "python": platform.python_version()},
        "load_average_at_start": os.getloadavg(),
        "client_note": CLIENT_NOTE.format(cpus=cores),
        "model": {
            "path": str(args.model),
            "name": info.get("name"),
            "base_model": info.get("base_model"),
            "sha256": info["source_checkpoint"]["sha256"],
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "default_variant": chosen,
        "default_variant_reason": why,
        "variant_of": {},
        "results": [],
    }
    print(f"default variant: {chosen} ({why})", flush=True)
    rows = report["results"]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        logs = Path(tmp)
        servers: list[tuple[str, list[str], tuple[str, ...], str | None]] = []
        if not args.no_default:
            name = f"serve (default: {chosen})"
            servers.append((name, [*args.serve_arg], SERVE, chosen))
            report["default_server"] = name
        servers += [(f"serve --variant {v}", ["--variant", v, *args.serve_arg], SERVE, v) for v in variants]
        if not args.no_baseline:
            baseline = (sys.executable, __file__, "--baseline-server", "--data", str(data))
            servers += [
                (f"{BASELINE} (stock torch threads)", [], baseline, None),
                (f"{BASELINE} (1 torch thread)", ["--threads", "1"], baseline, None),
            ]
        for name, server_args, command, variant in servers:
            got, _ = run_server_bench(name, server_args, texts, args, logs, command)
            rows += got
            if variant:
                report["variant_of"][name] = variant
        if not args.no_bare:
            report["bare"] = {}
            for v in dict.fromkeys([chosen, *variants]):
                threads = options.default_threads(cores, 1, v)
                report["bare"][v] = bare(args, v, threads, data)
                b = report["bare"][v]
                print(
                    f"  bare {v:<5} threads {threads}: batch 1 {b['batch1_texts_per_s']:.1f}, "
                    f"batch 32 {b['batch32_texts_per_s']:.1f} texts/s",
                    flush=True,
                )
        if args.long_run and not args.no_default:
            name = f"long run (default: {chosen})"
            got, log = run_server_bench(
                name,
                [*args.serve_arg],
                texts,
                argparse.Namespace(**{**vars(args), "requests": args.long_run}),
                logs,
                concurrency=[64],
            )
            report["long_run"] = got[0]
            report["long_run_server_log_tail"] = log[-2000:]
        if args.log_overhead and not args.no_default:
            sub = argparse.Namespace(**{**vars(args), "concurrency": [16]})
            off, _ = run_server_bench("log off", [*args.serve_arg], texts, sub, logs)
            on, _ = run_server_bench(
                "log on", ["--log-dir", str(logs / "predlog"), *args.serve_arg], texts, sub, logs
            )
            written = sum(1 for f in (logs / "predlog").glob("predictions-*.jsonl*") for _ in f.open())
            report["log_overhead"] = {
                "rows": off + on,
                "records_written": written,
                "rps_change_pct": round(100 * (on[0]["rps"] / off[0]["rps"] - 1), 1),
            }
    report["ratios"] = ratios(report)
    report["floors"] = floors(report)
    if args.accuracy:
        report["accuracy"] = accuracy(str(args.model), exported, data)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_report(report)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
