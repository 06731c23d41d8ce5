"""Write every generated table in the docs from the committed result files, or check that they agree.

    .venv/bin/python scripts/docs_tables.py           # rewrite the blocks in README.md and docs/
    .venv/bin/python scripts/docs_tables.py --check   # exit 1, naming the block, if any is stale

A block sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``; everything else in a doc
is prose and stays as written. The sources: ``reports/metrics.json`` (the pipeline model, written by
``dvc repro``'s ``evaluate`` stage), the seed studies in ``results/seeds/`` (``emotions-pl seeds``),
the comparisons in ``results/compare/`` (``emotions-pl compare --output``) and the MPNet teacher's
``evaluate`` in ``results/mpnet/``, the validation sweeps in ``results/tune/``
(``scripts/experiments/sweep_json.py``) and the benchmarks' reports in ``results/bench/``.
``tests/test_docs.py`` runs ``--check``, so a number in the docs cannot drift from its file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
METRICS = Path("reports") / "metrics.json"  # paths relative to the checkout (--root)
SEEDS = Path("results") / "seeds"
COMPARE = Path("results") / "compare"  # `compare --output` files the docs quote
MPNET = Path("results") / "mpnet" / "metrics.json"  # `evaluate` of the MPNet teacher's export
BENCH = Path("results") / "bench"  # `python -m scripts.bench.NAME` reports
TUNE = Path("results") / "tune"  # validation sweeps: a `tune` study's trials as JSON
LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


ROOT = REPO  # the checkout whose docs and files are read: --root (tests point it at a copy)


def load(path: Path) -> dict[str, Any]:
    return json.loads((ROOT / path).read_text(encoding="utf-8"))


def ci(values: dict[str, Any], key: str) -> str:
    return f"{values[key]:.4f} [{values[key + '_ci_low']:.4f}, {values[key + '_ci_high']:.4f}]"


def headline() -> str:
    m = load(METRICS)
    return (
        f"**Pipeline model** (`dvc repro`: MiniLM-L6, seed 42), test split of 2,000 texts: accuracy "
        f"{ci(m, 'test/acc')}, macro-F1 {ci(m, 'test/f1_macro')}, surprise F1 {ci(m, 'test/f1/surprise')} "
        "(95 % bootstrap intervals; `reports/metrics.json`).\n"
    )


def metrics_table(path: Path) -> Callable[[], str]:
    """Test accuracy, macro-F1 and per-class F1 with intervals (an ``evaluate`` metrics.json); variants."""

    def render() -> str:
        m = load(path)
        lines = ["| metric | test value [95 % interval] |", "|---|---:|"]
        lines += [f"| accuracy | {ci(m, 'test/acc')} |", f"| macro-F1 | {ci(m, 'test/f1_macro')} |"]
        lines += [f"| F1 {label} | {ci(m, f'test/f1/{label}')} |" for label in LABELS]
        variants = sorted({k.split("/")[1] for k in m if k.startswith("variants/")})
        if len(variants) > 1:
            lines += ["", "| variant | accuracy [95 %] | macro-F1 [95 %] |", "|---|---:|---:|"]
            lines += [
                f"| {v} | {ci(m, f'variants/{v}/acc')} | {ci(m, f'variants/{v}/f1_macro')} |"
                for v in variants
            ]
        return "\n".join(lines) + "\n"

    return render


def calibration_table() -> str:
    m = load(METRICS)
    variants = sorted({k.split("/")[1] for k in m if k.startswith("calibration/") and k.count("/") == 3})
    lines = [
        "| variant | split, stage | ECE [95 %] | perfectly calibrated: median / 95th pct | equal-mass ECE "
        "| its floor 95th pct | NLL | accuracy |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    stages = (
        ("validation_before", "validation, raw"),
        ("validation", "validation, calibrated"),
        ("before", "test, raw"),
        ("after", "test, calibrated"),
    )
    rows: dict[str, list[str]] = {}
    for v in variants:
        rows[v] = [
            f"| {where} | {m[p + 'ece']:.4f} [{m[p + 'ece_low']:.4f}, {m[p + 'ece_high']:.4f}] | "
            f"{m[p + 'ece_floor_median']:.4f} / {m[p + 'ece_floor_p95']:.4f} | {m[p + 'ece_mass']:.4f} | "
            f"{m[p + 'ece_mass_floor_p95']:.4f} | {m[p + 'nll']:.4f} | {m[p + 'acc']:.4f} |"
            for stage, where in stages
            if (p := f"calibration/{v}/{stage}/") + "ece" in m
        ]
    # ONNX Runtime's fp32 graph scores what PyTorch does (parity 1e-3 on logits): a variant whose rows read
    # the same as fp32's at the table's precision is named once below, not repeated.
    same = [v for v in variants if v != "fp32" and rows[v] == rows.get("fp32")]
    lines += [f"| {v} {row}" for v in variants if v not in same for row in rows[v]]
    if same:
        lines += ["", f"{', '.join(same)}: the same values as fp32."]
    return "\n".join(lines) + "\n"


def mean_std(summary: dict[str, Any]) -> str:
    return f"{summary['mean']:.4f} ± {summary['std']:.4f}"


# The arms' factors: a `compare` of the 6 models with it against the 6 without (results/compare/<name>.json).
FACTORS = ("distillation", "averaging")
# The model issue's four arms (MiniLM, fp32, 3 seeds each): study name -> what it adds to the recipe.
ARMS = {
    "head": "today's recipe (`configs/experiment/offline.yaml`)",
    "ema": "+ weight averaging (`configs/callbacks/ema.yaml`)",
    "distill": "distilled from MPNet (`configs/experiment/distill.yaml`, `teachers/mpnet.npz`)",
    "distill_ema": "distilled + weight averaging",
}


def paired(c: dict[str, Any]) -> list[str]:
    """A ``compare`` result in a table's cells: test accuracy and macro-F1 B - A [95 %], the verdict."""
    d = c["difference"]
    shifts = [
        f"{d[m]['value']:+.4f} [{d[m]['ci_low']:+.4f}, {d[m]['ci_high']:+.4f}]" for m in ("acc", "f1_macro")
    ]
    return [*shifts, c["verdict"].split(" (")[0]]


def arms_table() -> str:
    """One row per arm from its seed study: validation and test mean ± std, surprise F1, minutes per fit,
    and ``compare`` against today's recipe (the study's ``--reference``): test B - A with its paired 95 %
    interval and the verdict; "not run yet" rows."""

    def minutes(summary: dict[str, Any] | None) -> str:
        return f"{summary['mean']:.1f} ± {summary['std']:.1f}" if summary else "n/a"

    def against(study: dict[str, Any], name: str) -> str:
        c = (study.get("reference") or {}).get("comparison")
        if c is None:
            return "(the reference)" if name == "head" else "not compared yet"
        acc, f1, verdict = paired(c)
        return f"{acc} / {f1}: {verdict}"

    lines = [
        "| arm | seeds | val acc | val macro-F1 | test acc | test macro-F1 | test surprise F1 | min / fit "
        "| test B - A: acc / macro-F1 [95 %] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, title in ARMS.items():
        source = SEEDS / f"{name}.json"
        if not (ROOT / source).is_file():
            lines.append(f"| {title} | 0 | not run yet | | | | | | |")
            continue
        study = load(source)
        sv, st = study["summary"]["validation"], study["summary"]["test"]
        lines.append(
            f"| {title} | {len(study['seeds'])} | {mean_std(sv['acc'])} | {mean_std(sv['f1_macro'])} | "
            f"{mean_std(st['acc'])} | {mean_std(st['f1_macro'])} | {mean_std(st['f1']['surprise'])} | "
            f"{minutes(study['summary'].get('fit_minutes'))} | {against(study, name)} |"
        )
    return "\n".join(lines) + "\n"


def factors_table() -> str:
    """The four arms as a 2 x 2 design: each factor's main effect, the 6 models with it against the 6
    without (the same seeds paired), from ``compare --output`` files in ``results/compare/``."""
    lines = [
        "| factor: B against A (6 models each) | test acc B - A [95 %] | macro-F1 B - A [95 %] | verdict |",
        "|---|---:|---:|---|",
    ]
    for name in FACTORS:
        c = load(COMPARE / f"{name}.json")
        lines.append(f"| {c['names']['b']} against {c['names']['a']} | {' | '.join(paired(c))} |")
    return "\n".join(lines) + "\n"


def sweep_table(name: str) -> Callable[[], str]:
    """A validation sweep (``results/tune/<name>.json``, dumped from the ``tune`` study): one row per
    trial, its parameters and objective, the best in bold."""

    def render() -> str:
        sweep = load(TUNE / f"{name}.json")
        done = [t for t in sweep["trials"] if t["state"] == "COMPLETE"]
        best = max(done, key=lambda t: t["value"]) if done else None
        keys = sorted({k for t in sweep["trials"] for k in t["params"]})
        lines = [
            "| " + " | ".join(f"`{k}`" for k in keys) + f" | {sweep['objective']} | min |",
            "|" + "---:|" * (len(keys) + 2),
        ]
        for t in sweep["trials"]:
            value = f"{t['value']:.4f}" if t["state"] == "COMPLETE" else t["state"].lower()
            value = f"**{value}**" if t is best else value
            params = " | ".join(str(t["params"].get(k, "")) for k in keys)
            lines.append(f"| {params} | {value} | {t['minutes'] or ''} |")
        return "\n".join(lines) + "\n"

    return render


def comparison(path: Path) -> Callable[[], str]:
    """A ``compare`` result (its ``--output``): each side, B - A with its paired interval, McNemar, the
    verdict."""

    def render() -> str:
        c = load(path)
        a, b = c["names"]["a"], c["names"]["b"]
        sizes = {s: f"{len(c['members'][s])} model" + ("s" * (len(c["members"][s]) > 1)) for s in ("a", "b")}
        lines = [
            f"A = `{a}` ({sizes['a']}), B = `{b}` ({sizes['b']}), {c['rows']} test texts:",
            "",
            "| metric | A | B | B - A [95 % paired bootstrap] |",
            "|---|---:|---:|---:|",
        ]
        for metric, title in (("acc", "accuracy"), ("f1_macro", "macro-F1")):
            d = c["difference"][metric]
            lines.append(
                f"| {title} | {c['a'][metric]:.4f} | {c['b'][metric]:.4f} | "
                f"{d['value']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] |"
            )
        s = c["f1_per_class"]["surprise"]
        lines.append(
            f"| surprise F1 | {s['a']:.4f} | {s['b']:.4f} | "
            f"{s['difference']:+.4f} [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}] |"
        )
        tests = "; ".join(
            f"A{t['a'] + 1}–B{t['b'] + 1}: {t['only_a']} vs {t['only_b']} rows, p = {t['p']:.3f}"  # noqa: RUF001 (an en dash between the pair)
            for t in c["mcnemar"]
        )
        lines += [
            "",
            f"McNemar (rows only A / only B gets right): {tests}.",
            "",
            f"**Verdict: {c['verdict']}.**",
        ]
        return "\n".join(lines) + "\n"

    return render


def shared_errors() -> str:
    """The test rows every model gets wrong (``scripts/experiments/shared_errors.py``): how many, per class,
    what they read as, and the accuracy left if every other row were right."""
    e = load(COMPARE / "shared_errors.json")
    models = ", ".join(f"{name} ({len(files)})" for name, files in e["models"].items())
    lines = [
        f"{e['missed_by_all']} of {e['rows']} test rows are wrong for all {e['members']} models ({models}; "
        f"each scores {e['member_accuracy']['min']:.4f}–{e['member_accuracy']['max']:.4f}); "  # noqa: RUF001 (a range)
        f"{e['missed_by_any']} are wrong for at least one. Right on every other row, a model would score "
        f"{e['ceiling_accuracy']:.4f}.",
        "",
        "| class | " + " | ".join(LABELS) + " |",
        "|---|" + "---:|" * len(LABELS),
        "| test rows | " + " | ".join(str(e["by_label"][k]["rows"]) for k in LABELS) + " |",
        "| wrong for all | " + " | ".join(str(e["by_label"][k]["missed_by_all"]) for k in LABELS) + " |",
        "",
        "Most often read as: "
        + ", ".join(f"{p['actual']} as {p['read_as']} {p['rows']}" for p in e["pairs"][:4])
        + ". The shortest: "
        + "; ".join(f'"{x["text"]}" ({x["actual"]}, read as {x["read_as"]})' for x in e["examples"][:4])
        + ".",
    ]
    return "\n".join(lines) + "\n"


def bench_serve() -> str:
    """The serving benchmark: req/s (p50 / p95 / p99 ms) per server and concurrency, bare bound, floors."""
    report = load(BENCH / "serve.json")
    levels = report["settings"]["concurrency"]
    cells: dict[str, dict[int, str]] = {}
    for row in report["results"]:
        cells.setdefault(row["server"], {})[row["concurrency"]] = (
            f"{row['rps']:.1f} ({row['p50_ms']:.1f} / {row['p95_ms']:.1f} / {row['p99_ms']:.1f})"
        )
    bad = sum(row["non_2xx"] for row in report["results"])
    lines = [
        f"Model `{report['model']['name']}` ({report['machine']['cpus']} cores, {report['created'][:10]}); "
        f"the default picked {report['default_variant']}. Req/s (p50 / p95 / p99 ms), "
        f"{report['settings']['requests']} requests a level, {bad} non-2xx:",
        "",
        "| server | " + " | ".join(f"c={c}" for c in levels) + " |",
        "|---|" + "---:|" * len(levels),
    ]
    lines += [
        f"| {name} | " + " | ".join(row.get(c, "") for c in levels) + " |" for name, row in cells.items()
    ]
    sizes = list(next(iter(report["bare"].values()))["chunk_texts_per_s"])
    lines += [
        "",
        f"Bare model, texts/s in chunks of {' / '.join(sizes)} (the **bound** is the best):",
        "",
        "| variant | threads | " + " | ".join(f"chunk {k}" for k in sizes) + " | bound |",
        "|---|---:|" + "---:|" * (len(sizes) + 1),
    ]
    for v, b in report["bare"].items():
        speeds = " | ".join(f"{b['chunk_texts_per_s'][k]:.1f}" for k in sizes)
        lines.append(f"| {v} | {b['threads']} | {speeds} | {b['bound_texts_per_s']:.1f} |")
    lines += ["", "| floor | value | target | met |", "|---|---:|---:|---|"]
    lines += [
        f"| {f['what']} | {f['value']:g} | {f['target']:g} | {'yes' if f['met'] else '**no**'} |"
        for f in report["floors"]
    ]
    if "long_run" in report:
        lr = report["long_run"]
        lines += [
            "",
            f"Long run: {lr['requests']:,} requests at c={lr['concurrency']}, {lr['rps']:.1f} req/s, "
            f"p50 {lr['p50_ms']:.1f} / p99 {lr['p99_ms']:.1f} ms, {lr['non_2xx']} non-2xx.",
        ]
    return "\n".join(lines) + "\n"


def bench_train_ema() -> str:
    """Weight averaging's cost per fit step (``scripts.bench.train --ema``) against its floor."""
    report = load(BENCH / "train_ema.json")
    lines = [
        "| model | step s, plain | step s, averaged | cost | floor | met |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in report["ema"]:
        lines.append(
            f"| {r['model']} | {r['step_s']:.4f} | {r['step_s_ema']:.4f} | {r['cost_pct']:.1f} % | "
            f"{r['floor_pct']} % | {'yes' if r['met'] else 'no'} |"
        )
    spread = ", ".join(f"{r['contender']} {r['spread']}" for r in report["rows"])
    lines += [
        "",
        f"Medians of {report['repeats']} alternating repeats of {report['samples']} real train texts "
        f"(samples/s spread: {spread}).",
    ]
    return "\n".join(lines) + "\n"


# Each block's name -> what writes it. A block whose source file is missing is left as it is.
RENDERERS: dict[str, tuple[Path, Callable[[], str]]] = {
    "headline": (METRICS, headline),
    "pipeline-metrics": (METRICS, metrics_table(METRICS)),
    "mpnet-metrics": (MPNET, metrics_table(MPNET)),
    "pipeline-calibration": (METRICS, calibration_table),
    "arms": (SEEDS / "head.json", arms_table),
    "factors": (COMPARE / "averaging.json", factors_table),
    "sweep-ema": (TUNE / "ema.json", sweep_table("ema")),
    "sweep-distill": (TUNE / "distill.json", sweep_table("distill")),
    "compare-calibrator": (COMPARE / "calibrator.json", comparison(COMPARE / "calibrator.json")),
    "compare-int8": (COMPARE / "int8.json", comparison(COMPARE / "int8.json")),
    "compare-mpnet": (COMPARE / "mpnet.json", comparison(COMPARE / "mpnet.json")),
    "shared-errors": (COMPARE / "shared_errors.json", shared_errors),
    "bench-serve": (BENCH / "serve.json", bench_serve),
    "bench-train-ema": (BENCH / "train_ema.json", bench_train_ema),
}


def rewrite(text: str, missing: list[str]) -> str:
    def block(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise SystemExit(f"error: unknown generated block {name!r}")
        source, render = RENDERERS[name]
        if not (ROOT / source).is_file():
            missing.append(f"{name} ({source} is missing)")
            return match[0]
        return match[1] + render() + match[4]

    return BLOCK.sub(block, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    parser.add_argument("--root", type=Path, default=REPO, help="the checkout (default: this one)")
    args = parser.parse_args()
    global ROOT
    ROOT = args.root.resolve()
    stale, missing = [], []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        new = rewrite(text, missing)
        if new != text:
            stale.append(str(doc.relative_to(ROOT)))
            if not args.check:
                doc.write_text(new, encoding="utf-8")
    for name in missing:
        print(f"skipped: {name}", file=sys.stderr)
    if args.check and (stale or missing):
        print(
            f"stale generated tables in: {', '.join(stale) or '-'}; run scripts/docs_tables.py",
            file=sys.stderr,
        )
        return 1
    print(("stale: " if args.check else "rewrote: ") + (", ".join(stale) or "nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
