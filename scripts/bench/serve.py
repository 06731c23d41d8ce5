"""Serving benchmark: `serve` (its defaults, and each variant) vs a naive FastAPI + pipeline baseline,
with the bare model's throughput as the bound, all measured in one run on this machine.

Each server runs as its own process on 127.0.0.1, one after the other. A light asyncio HTTP/1.1 client
(keep-alive connections, no client library) sends single-text requests drawn from the test split at
each concurrency level and records requests/s and latency percentiles. The client runs on the same
cores as the server: on a 2-core machine it takes CPU the server could have used, so every number
here is a lower bound of what a remote client would see (the baseline pays the same cost).

    python -m scripts.bench.serve --model models/emotions                      # the whole report
    python -m scripts.bench.serve --model models/emotions --requests 100 --long-run 0 --no-baseline
    python -m scripts.bench.serve --smoke          # a tiny model, c=1 and 16, few requests (seconds)

Parts (each can be skipped): the default server (``serve --model M``, no other flag) and one server per
exported variant (``--variant V``); the baseline at stock torch threads and at 1 thread; the bare-model
bound of each variant (``common.bare_bound``: the best texts/s over chunk sizes, at the thread count the
server's worker uses, in a fresh process); ``--long-run N`` requests at c=64 on the default server (0
non-2xx expected); the prediction log's overhead (``--log-overhead``). Prints tables, the ratios and the
issue's floors; writes JSON (``results/bench/serve.json``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from emotions_pl.artifact.predictor import VARIANT_FILES
from emotions_pl.serve import options
from scripts.bench import common

BASELINE = "baseline"
SMOKE = {
    "variants": [],
    "concurrency": [1, 16],
    "requests": 32,
    "warmup": 4,
    "long_run": 0,
    "bare_seconds": 0.3,
    "data": common.SAMPLE_DATA,
}


# -- the baseline ------------------------------------------------------------------------------------


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


def accuracy(model: str, variants: list[str], data: Path) -> dict[str, Any]:
    """Test-split accuracy per variant and its loss against fp32, in points."""
    from emotions_pl.artifact.predictor import Predictor

    rows = common.read_jsonl(data)
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


SERVER_COLUMNS = {
    "server": "server",
    "conc": "concurrency",
    "req/s": "rps",
    "p50 ms": "p50_ms",
    "p95 ms": "p95_ms",
    "p99 ms": "p99_ms",
    "non-2xx": "non_2xx",
}
MS = {"rps": ".1f", "p50_ms": ".1f", "p95_ms": ".1f", "p99_ms": ".1f"}


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


def bare_table(bounds: list[dict[str, Any]]) -> str:
    rows = [{**b, **{f"chunk {k}": v for k, v in b["chunk_texts_per_s"].items()}} for b in bounds]
    columns = {"variant": "variant", "threads": "threads", "server chunk": "server_chunk"}
    columns |= {f"chunk {k}": f"chunk {k}" for k in common.CHUNKS}
    columns |= {"best chunk": "best_chunk", "bound": "bound_texts_per_s"}
    return common.table(rows, columns, {k: ".1f" for k in [*columns.values()][3:]} | {"best_chunk": "d"})


def print_report(report: dict[str, Any]) -> None:
    rows = report["results"]
    print()
    print(f"Note: {report['client_note']}.")
    print(common.table(rows, SERVER_COLUMNS, MS))
    if report.get("bare"):
        print(f"\n{report['bound_note']}; texts/s per chunk size:")
        print(bare_table(list(report["bare"].values())))
    if report.get("ratios"):
        print("\nratios (server req/s / better baseline req/s; server req/s / bare bound of its variant):")
        columns = {"server": "server", "conc": "concurrency", "x baseline": "x_baseline"}
        print(common.table(report["ratios"], columns | {"x bare bound": "x_bound"}))
    if report.get("floors"):
        print("\nfloors (issue 12):")
        floors_ = [{**f, "met": "yes" if f["met"] else "NO"} for f in report["floors"]]
        print(common.table(floors_, {"floor": "what", "value": "value", "target": "target", "met": "met"}))
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
    p.add_argument("--model", type=Path, help=common.MODEL_HELP)
    p.add_argument("--variants", nargs="*", help="variants to serve one by one (default: all exported)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument(
        "--requests", type=int, default=400, help="requests per concurrency level (at least 4 x c)"
    )
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument(
        "--long-run", type=int, default=20000, help="requests at c=64 on the default server (0: skip)"
    )
    p.add_argument("--bare-seconds", type=float, default=4.0, help="seconds per chunk size of the bound")
    p.add_argument("--serve-arg", action="append", default=[], help="extra flag for every `serve` (repeat)")
    p.add_argument("--no-default", action="store_true", help="skip the default server")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline")
    p.add_argument("--no-bare", action="store_true", help="skip the bare-model bound")
    p.add_argument(
        "--log-overhead", action="store_true", help="the prediction log on vs off (default server)"
    )
    p.add_argument("--accuracy", action="store_true", help="score every variant on the test split")
    p.add_argument("--data", type=Path, default=common.DEFAULT_DATA, help="test jsonl (text, label)")
    p.add_argument("--output", type=Path, help="default results/bench/serve.json")
    p.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = common.parse(p, SMOKE)
    if args.baseline_server:
        baseline_server(str(args.model), args.port, args.threads)
        return 0
    if args.model is None and not args.smoke:
        p.error("--model is required (or --smoke)")
    output = common.output_path(args.output, "serve", args.smoke)
    data = args.data if args.data.is_file() else common.SAMPLE_DATA
    texts = [r["text"] for r in common.read_jsonl(data)]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        logs = Path(tmp)
        model = args.model or common.smoke_export(logs)
        report = run(args, model, data, texts, logs)
    report["ratios"] = ratios(report)
    report["floors"] = floors(report)
    common.write_json(output, report)
    print_report(report)
    return 0


def run(args: argparse.Namespace, model: Path, data: Path, texts: list[str], logs: Path) -> dict[str, Any]:
    """Every part the flags ask for, one server at a time; the report without ratios and floors."""
    info = json.loads((model / "export_info.json").read_text())
    exported = [v for v in ("fp32", "onnx", "int8") if (model / VARIANT_FILES[v]).is_file()]
    variants = args.variants if args.variants is not None else exported
    chosen, why = options.choose_variant(model, info)
    machine = common.machine()
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "smoke": args.smoke,
        "machine": machine,
        "client_note": common.CLIENT_NOTE.format(cpus=machine["cpus"]),
        "bound_note": common.BOUND_NOTE,
        "model": {
            "path": str(model),
            "name": info.get("name"),
            "base_model": info.get("base_model"),
            "sha256": info["source_checkpoint"]["sha256"],
        },
        "settings": common.settings(args),
        "default_variant": chosen,
        "default_variant_reason": why,
        "variant_of": {},
        "results": [],
    }
    print(f"default variant: {chosen} ({why})", flush=True)
    rows = report["results"]

    def bench(
        name: str, server_args: list[str], command: tuple[str, ...] | None = None, **load: Any
    ) -> tuple[list[dict[str, Any]], str]:
        load = {"concurrency": args.concurrency, "requests": args.requests, "warmup": args.warmup} | load
        return common.run_server_bench(name, model, server_args, texts, logs, command=command, **load)

    servers: list[tuple[str, list[str], tuple[str, ...] | None, str | None]] = []
    if not args.no_default:
        name = f"serve (default: {chosen})"
        servers.append((name, [*args.serve_arg], None, chosen))
        report["default_server"] = name
    servers += [(f"serve --variant {v}", ["--variant", v, *args.serve_arg], None, v) for v in variants]
    if not args.no_baseline:
        baseline = (sys.executable, "-m", "scripts.bench.serve", "--baseline-server")
        servers += [
            (f"{BASELINE} (stock torch threads)", [], baseline, None),
            (f"{BASELINE} (1 torch thread)", ["--threads", "1"], baseline, None),
        ]
    for name, server_args, command, variant in servers:
        got, _ = bench(name, server_args, command)
        rows += got
        if variant:
            report["variant_of"][name] = variant
    if not args.no_bare:
        report["bare"] = {}
        for v in dict.fromkeys([chosen, *variants]):
            threads = options.default_threads(machine["cpus"], 1, v)
            b = report["bare"][v] = common.bare_bound(model, v, threads, data, seconds=args.bare_seconds)
            print(
                f"  bare {v:<5} threads {threads}: {b['bound_texts_per_s']:.1f} texts/s in chunks of "
                f"{b['best_chunk']} (chunk sizes {b['chunk_texts_per_s']})",
                flush=True,
            )
    if args.long_run and not args.no_default:
        got, log = bench(
            f"long run (default: {chosen})", [*args.serve_arg], None, concurrency=[64], requests=args.long_run
        )
        report["long_run"] = got[0]
        report["long_run_server_log_tail"] = log[-2000:]
    if args.log_overhead and not args.no_default:
        off, _ = bench("log off", [*args.serve_arg], concurrency=[16])
        on, _ = bench("log on", ["--log-dir", str(logs / "predlog"), *args.serve_arg], concurrency=[16])
        written = sum(1 for f in (logs / "predlog").glob("predictions-*.jsonl*") for _ in f.open())
        report["log_overhead"] = {
            "rows": off + on,
            "records_written": written,
            "rps_change_pct": round(100 * (on[0]["rps"] / off[0]["rps"] - 1), 1),
        }
    if args.accuracy:
        report["accuracy"] = accuracy(str(model), exported, data)
    return report


if __name__ == "__main__":
    sys.exit(main())
