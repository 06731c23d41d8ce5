"""Explanation benchmark: what an explanation costs, whether it is faithful, and what `/explain` under
load leaves `/predict`.

    python -m scripts.bench.explain --model models/emotions            # the whole report
    python -m scripts.bench.explain --model models/emotions --n 100 --no-serve
    python -m scripts.bench.explain --smoke       # a tiny model, a dozen texts, short phases (seconds)

Parts (each can be skipped):

* **cost**: milliseconds per explanation (one text, one thread, as the server runs it) at the default
  steps on ``--cost-texts`` test texts, and at other step counts on fewer, with the mean convergence delta;
* **faithfulness** (ERASER "comprehensiveness", on every core): on ``--n`` test texts (seeded sample),
  delete the top-k attributed words, or k random words (``--random-draws`` seeded draws, averaged), for
  k = 1, 2, 3 (only texts with more than k words the model saw), and measure the drop of the predicted
  label's probability, with the served variant and with fp32; the gap top-k minus random, a paired
  bootstrap 95 % interval and the share of texts where top-k drops it more;
* **serve**: ``/predict`` requests/s at c=16 on the default server, alone, then while ``/explain`` is kept
  saturated (more senders than its queue admits), then alone again; loopback, bounded by
  ``--requests`` and ``--max-seconds``. The floor: >= 60 % kept.

Prints markdown tables; writes JSON (``--output``, default ``results/bench/explain.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from emotions_pl.artifact.explain import DEFAULT_STEPS, Explainer, top_words, without
from emotions_pl.artifact.predictor import Predictor
from emotions_pl.serve import options
from scripts.bench import common

KS = (1, 2, 3)
SMOKE = {
    "n": 12,
    "cost_texts": 4,
    "steps": [8, DEFAULT_STEPS],
    "random_draws": 2,
    "requests": 24,
    "max_seconds": 30,
    "data": common.SAMPLE_DATA,
}


def cost(
    explainer: Explainer, texts: list[str], steps: list[int], n_default: int, n_other: int
) -> list[dict]:
    rows = []
    explainer.explain(texts[:2])  # warm up
    for s in dict.fromkeys(steps):
        sample = texts[: n_default if s == explainer.steps else n_other]
        ms, deltas = [], []
        for text in sample:
            start = time.perf_counter()
            target = explainer.labels.index(explainer.predictor.predict([text])[0]["label"])
            result = explainer.attribute(text, target, steps=s)
            ms.append(1000 * (time.perf_counter() - start))
            deltas.append(result["convergence_delta"])
        rows.append(
            {
                "steps": s,
                "texts": len(sample),
                "mean_ms": round(float(np.mean(ms)), 1),
                "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p95_ms": round(float(np.percentile(ms, 95)), 1),
                "mean_convergence_delta": round(float(np.mean(deltas)), 4),
            }
        )
        print(f"  cost steps={s:<3} {rows[-1]}", flush=True)
    return rows


def faithfulness(
    explainer: Explainer, fp32: Predictor, texts: list[str], draws: int, seed: int
) -> dict[str, Any]:
    """ERASER comprehensiveness: p(y|x) - p(y|x without the words), y the served variant's label."""
    rng = random.Random(seed)
    results = explainer.explain(texts)
    served = explainer.predictor
    variants = (
        {served.variant: served} if served.variant == "fp32" else {served.variant: served, "fp32": fp32}
    )
    cases = []  # (text index, k, top-k text, random texts)
    for i, (text, result) in enumerate(zip(texts, results, strict=True)):
        words = result["words"]
        seen = [j for j, w in enumerate(words) if w["attribution"] is not None]
        for k in KS:
            if len(seen) <= k:
                continue
            top = without(text, words, top_words(words, k))
            randoms = [without(text, words, rng.sample(seen, k)) for _ in range(draws)]
            cases.append((i, k, top, randoms))
    out: dict[str, Any] = {"texts": len(texts), "random_draws": draws, "seed": seed, "by_variant": {}}
    boot = np.random.default_rng(seed)
    for name, predictor in variants.items():
        target = [predictor.labels.index(r["label"]) for r in results]
        base = predictor.predict_proba(texts)[np.arange(len(texts)), target]
        top_p = predictor.predict_proba([c[2] for c in cases])
        rand_p = predictor.predict_proba([t for c in cases for t in c[3]]).reshape(len(cases), draws, -1)
        rows = []
        for k in KS:
            idx = [n for n, c in enumerate(cases) if c[1] == k]
            if not idx:
                continue
            owners = [cases[n][0] for n in idx]
            t = np.array([target[o] for o in owners])
            top_drop = base[owners] - top_p[idx, t]
            rand_drop = base[owners] - rand_p[idx, :, t].mean(-1)
            gap = top_drop - rand_drop
            means = [gap[boot.integers(0, len(gap), len(gap))].mean() for _ in range(1000)]
            rows.append(
                {
                    "k": k,
                    "texts": len(idx),
                    "top_k_drop": round(float(top_drop.mean()), 4),
                    "random_k_drop": round(float(rand_drop.mean()), 4),
                    "gap": round(float(gap.mean()), 4),
                    "gap_ci95": [round(float(np.percentile(means, q)), 4) for q in (2.5, 97.5)],
                    "top_beats_random_share": round(float((gap > 0).mean()), 3),
                    "met": bool(top_drop.mean() > rand_drop.mean()),
                }
            )
        out["by_variant"][name] = rows
        for r in rows:
            print(f"  faithfulness ({name}) {r}", flush=True)
    return out


async def saturate(url: str, texts: list[str], senders: int, stop: asyncio.Event) -> dict[str, int]:
    """Keep /explain busy: ``senders`` keep-alive connections, each posting 8 random texts until ``stop``."""
    host, port = url.removeprefix("http://").split(":")
    statuses: dict[str, int] = {}

    async def sender(n: int) -> None:
        rng = random.Random(n)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while not stop.is_set():
                body = json.dumps({"texts": rng.sample(texts, 8)}).encode()
                writer.write(common.post(host, "/explain", body))
                status = str(await common.read_response(reader))
                statuses[status] = statuses.get(status, 0) + 1
                if status == "429":
                    await asyncio.sleep(0.05)  # the queue is full: it is saturated, no need to spin
        finally:
            writer.close()

    tasks = [asyncio.create_task(sender(n)) for n in range(senders)]
    await stop.wait()
    await asyncio.wait(tasks, timeout=60)
    return statuses


async def predict_while_explaining(
    url: str, texts: list[str], requests: int, senders: int, max_seconds: float
) -> dict[str, Any]:
    stop = asyncio.Event()
    explaining = asyncio.create_task(saturate(url, texts, senders, stop))
    await asyncio.sleep(2.0)  # the queue fills
    try:
        row = await asyncio.wait_for(common.load(url, texts, 16, requests, seed=16), max_seconds)
    finally:
        stop.set()
    row["explain_statuses"] = await explaining
    return row


def serve_part(model: Path, args: argparse.Namespace, texts: list[str], logs: Path) -> dict[str, Any]:
    from tests.helpers import Server  # the tests' server process (common.run_server_bench's too)

    server = Server(model, logs / "serve.log", "--variant", args.variant, ready_timeout=300)
    try:
        asyncio.run(common.load(server.url, texts, 4, 40, seed=99))  # warm up
        # One explanation first: the explainer loads in the HTTP process on first need.
        asyncio.run(predict_while_explaining(server.url, texts, 16, 1, args.max_seconds))
        rows = []
        for phase in ("alone", "explain saturated", "alone again"):
            if phase == "explain saturated":
                senders = options.EXPLAIN_QUEUE + 4
                row = asyncio.run(
                    predict_while_explaining(server.url, texts, args.requests, senders, args.max_seconds)
                )
            else:
                row = asyncio.run(
                    asyncio.wait_for(common.load(server.url, texts, 16, args.requests), args.max_seconds)
                )
            rows.append({"phase": phase, **row})
            print(f"  /predict c=16 {phase:<18} {row['rps']:>7.1f} req/s p50 {row['p50_ms']} ms", flush=True)
    finally:
        server.stop(signal.SIGTERM)
    alone = min(rows[0]["rps"], rows[2]["rps"]), max(rows[0]["rps"], rows[2]["rps"])
    kept = rows[1]["rps"] / float(np.mean(alone))
    return {"rows": rows, "kept": round(kept, 3), "floor": 0.6, "met": kept >= 0.6}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help=common.MODEL_HELP)
    p.add_argument("--data", type=Path, default=common.DEFAULT_DATA, help="test jsonl (text, label)")
    p.add_argument(
        "--variant", help="the variant served and whose label is explained (default: serve's auto choice)"
    )
    p.add_argument("--n", type=int, default=500, help="texts for the faithfulness benchmark")
    p.add_argument("--cost-texts", type=int, default=100, help="texts timed at the default steps")
    p.add_argument("--steps", type=int, nargs="*", default=[8, 16, DEFAULT_STEPS, 64])
    p.add_argument("--random-draws", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--requests", type=int, default=800, help="/predict requests per phase")
    p.add_argument("--max-seconds", type=float, default=120, help="time bound per phase")
    p.add_argument("--no-cost", action="store_true")
    p.add_argument("--no-faithfulness", action="store_true")
    p.add_argument("--no-serve", action="store_true")
    p.add_argument("--output", type=Path, help="default results/bench/explain.json")
    args = common.parse(p, SMOKE)
    if args.model is None and not args.smoke:
        p.error("--model is required (or --smoke)")
    output = common.output_path(args.output, "explain", args.smoke)
    options.set_openmp_waiting()  # as the server does (before torch starts OpenMP)
    with tempfile.TemporaryDirectory(prefix="bench-explain-") as tmp:
        model = args.model or common.smoke_export(Path(tmp))
        report = run(model, args, Path(tmp))
    common.write_json(output, report)
    print_report(report)
    return 0


def run(model: Path, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    rows = common.read_jsonl(args.data)
    texts = [r["text"] for r in random.Random(args.seed).sample(rows, min(args.n, len(rows)))]
    info = json.loads((model / "export_info.json").read_text())
    variant = args.variant = args.variant or options.choose_variant(model, info)[0]
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "smoke": args.smoke,
        "machine": common.machine(),
        "model": {"path": str(model), "name": info.get("name"), "served_variant": variant},
        "data": str(args.data),
        "default_steps": DEFAULT_STEPS,
        "settings": common.settings(args),
    }
    print(f"served variant {variant}; attributions from fp32 at {DEFAULT_STEPS} steps", flush=True)
    explainer = Explainer.from_folder(model, variant, DEFAULT_STEPS, num_threads=1)
    if not args.no_cost:
        report["cost"] = cost(explainer, texts, args.steps, args.cost_texts, max(10, args.cost_texts // 4))
    if not args.no_faithfulness:
        import torch

        # The attributions do not depend on the thread count; every core makes the 500 texts quicker.
        torch.set_num_threads(options.available_cores())
        fp32 = Predictor.from_model(
            explainer.model, explainer.tokenizer, explainer.labels, explainer.max_length
        )
        report["faithfulness"] = faithfulness(explainer, fp32, texts, args.random_draws, args.seed)
    if not args.no_serve:
        report["serve"] = serve_part(model, args, texts, logs)
    return report


def print_report(report: dict[str, Any]) -> None:
    if "cost" in report:
        columns = {"steps": "steps", "texts": "texts", "mean ms": "mean_ms", "p50 ms": "p50_ms"}
        columns |= {"p95 ms": "p95_ms", "mean convergence delta": "mean_convergence_delta"}
        print("\n" + common.table(report["cost"], columns))
    if "faithfulness" in report:
        rows = [
            {
                **r,
                "variant": name,
                "gap_ci": f"{r['gap']} ({r['gap_ci95'][0]}-{r['gap_ci95'][1]})",
                "share": f"{r['top_beats_random_share']:.1%}",
                "met": "yes" if r["met"] else "NO",
            }
            for name, by_k in report["faithfulness"]["by_variant"].items()
            for r in by_k
        ]
        columns = {"probabilities of": "variant", "k": "k", "texts": "texts", "top-k drop": "top_k_drop"}
        columns |= {"random-k drop": "random_k_drop", "gap (95 % CI)": "gap_ci", "top > random": "share"}
        print("\n" + common.table(rows, columns | {"met": "met"}))
    if "serve" in report:
        columns = {"/predict at c=16": "phase", "req/s": "rps", "p50 ms": "p50_ms", "p95 ms": "p95_ms"}
        columns |= {"non-2xx": "non_2xx", "/explain answers": "explain_statuses"}
        print("\n" + common.table(report["serve"]["rows"], columns))
        s = report["serve"]
        print(
            f"kept while /explain is saturated: {s['kept']:.1%} "
            f"(floor 60 %: {'met' if s['met'] else 'NOT met'})"
        )


if __name__ == "__main__":
    sys.exit(main())
