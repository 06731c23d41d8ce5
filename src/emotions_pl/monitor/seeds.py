"""``python -m emotions_pl seeds``: one recipe over N seeds, each seed's validation and test metrics,
mean ± std, and ``compare`` against a reference study.

Each seed is a real ``fit`` of the recipe (the same command a user runs, in a subprocess, with
``--seed_everything`` the only change) in ``<runs>/seed<N>``; then its best checkpoint is scored on the
validation and test splits through the Predictor. The JSON is rewritten (atomically) after every seed,
so a study spans sessions: a seed whose run folder already holds a finished fit (``run.json``) is
scored, not refitted, and an interrupted one resumes from its ``last.ckpt``. Each seed's test
predictions land beside the JSON (``<study>/seed<N>.test.csv``, the ``evaluate`` format), which is
what ``compare`` pools when it is given the study's JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from emotions_pl.commands import tool_parser
from emotions_pl.errors import UserError
from emotions_pl.files import atomic_write_text

SPLITS_SCORED = ("validation", "test")


def fit_command(configs: list[str], data: Path, seed: int, run: Path, extra: list[str]) -> list[str]:
    command = [sys.executable, "-m", "emotions_pl", "fit"]
    for config in configs:
        command += ["--config", config]
    command += ["--data.source", str(data.resolve()), "--seed_everything", str(seed)]
    command += ["--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false", *extra]
    last = run / "checkpoints" / "last.ckpt"
    return command + (["--ckpt_path", str(last)] if last.is_file() else [])


def fit(configs: list[str], data: Path, seed: int, run: Path, extra: list[str]) -> bool:
    """Fit one seed unless its run folder holds a finished fit; whether it fitted."""
    from emotions_pl.train import summary

    if summary.read(run / summary.RUN_FILE).get("checkpoints", {}).get("best"):
        return False
    run.mkdir(parents=True, exist_ok=True)
    command = fit_command(configs, data, seed, run, extra)
    print(f"seed {seed}: {' '.join(command[1:])}", flush=True)
    with (run / "fit.log").open("a", encoding="utf-8") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    if done.returncode != 0:
        raise UserError(f"seed {seed}: fit failed (exit {done.returncode}); see {run / 'fit.log'}.")
    return True


def score(run: Path, data: Path) -> tuple[dict[str, Any], str]:
    """The best checkpoint's metrics with intervals on each split, and its test predictions as CSV."""
    import numpy as np

    from emotions_pl import stats, tables
    from emotions_pl.artifact import checkpoint
    from emotions_pl.monitor.evaluate import csv_text
    from emotions_pl.train import summary

    record = summary.read(run / summary.RUN_FILE)
    best = Path(record["checkpoints"]["best"])
    fit = checkpoint.load(best)
    predictor = fit.predictor()
    # fit_seconds: the fit's wall time as run.json records it (none in runs from before it did)
    scored: dict[str, Any] = {
        "checkpoint": str(best),
        "epoch": fit.epoch,
        "fit_seconds": record.get("fit_seconds"),
    }
    rows = ""
    for split in SPLITS_SCORED:
        texts, targets = tables.read_split(tables.find_split_file(data, split), fit.labels, split)
        probs = predictor.predict_proba(texts)
        found = stats.intervals(probs.argmax(1), targets, fit.labels)
        scored[split] = {
            "acc": found["acc"],
            "f1_macro": found["f1_macro"],
            "f1": found["f1"],
        }
        if split == "test":
            names = np.array(fit.labels)
            records = [
                {"actual": a, "predicted": p, "score": round(float(s), 6)}
                for a, p, s in zip(names[targets], names[probs.argmax(1)], probs.max(1), strict=True)
            ]
            rows = csv_text(records, ["actual", "predicted", "score"])
    return scored, rows


def summarize(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over the seeds of each split's accuracy, macro-F1 and class F1."""
    import numpy as np

    def spread(values: list[float]) -> dict[str, float]:
        array = np.asarray(values, dtype=np.float64)
        std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
        return {"mean": float(array.mean()), "std": std, "n": len(array)}

    out: dict[str, Any] = {}
    for split in SPLITS_SCORED:
        out[split] = {m: spread([s[split][m]["value"] for s in seeds]) for m in ("acc", "f1_macro")}
        labels = seeds[0][split]["f1"]
        out[split]["f1"] = {k: spread([s[split]["f1"][k]["value"] for s in seeds]) for k in labels}
    fitted = [s["fit_seconds"] for s in seeds if s.get("fit_seconds")]
    out["fit_minutes"] = spread([f / 60 for f in fitted]) if fitted else None
    return out


def study(
    configs: list[str],
    seeds: list[int],
    data: Path,
    output: Path,
    runs: Path,
    extra: list[str],
    reference: Path | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    from emotions_pl.monitor import compare

    if not data.is_dir():
        raise UserError(f"--data {data}: not a data folder with train/validation/test files.")
    if reference is not None and not reference.is_file():
        raise UserError(f"--reference {reference}: no such seed-study file.")
    previous = json.loads(output.read_text(encoding="utf-8")) if output.is_file() else {}
    done = {s["seed"]: s for s in previous.get("seeds", [])}
    record: dict[str, Any] = {
        "name": name or output.stem,
        "recipe": {"config": configs, "flags": extra},
        "data": str(data),
        "runs": str(runs),
        "seeds": [],
    }
    folder = output.with_suffix("")
    for seed in seeds:
        run = runs / f"seed{seed}"
        fitted = fit(configs, data, seed, run, extra)
        entry = None if fitted else done.get(seed)
        if entry is None or not (folder / f"seed{seed}.test.csv").is_file():
            scored, rows = score(run, data)
            atomic_write_text(folder / f"seed{seed}.test.csv", rows)
            entry = {"seed": seed, "run": str(run), **scored}
        entry["predictions"] = f"{folder.name}/seed{seed}.test.csv"
        record["seeds"].append(entry)
        record["summary"] = summarize(record["seeds"])
        atomic_write_text(output, json.dumps(record, indent=1) + "\n")
        test = entry["test"]
        print(f"seed {seed}: test acc {test['acc']['value']:.4f}, macro-F1 {test['f1_macro']['value']:.4f}")
    if reference is not None:
        names = (
            json.loads(reference.read_text(encoding="utf-8")).get("name", reference.stem),
            record["name"],
        )
        result = compare.compare(str(reference), str(output), data, names=names)
        record["reference"] = {"study": str(reference), "comparison": result}
        atomic_write_text(output, json.dumps(record, indent=1) + "\n")
        print(compare.table(result))
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("seeds")
    parser.add_argument("--config", action="append", required=True, help="a fit --config (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="the seeds to fit")
    parser.add_argument("--data", type=Path, required=True, help="data folder (train/validation/test)")
    parser.add_argument("--output", type=Path, required=True, help="the study's JSON (kept between runs)")
    parser.add_argument("--runs", type=Path, help="run folders' parent (default runs/seeds/<output stem>)")
    parser.add_argument("--reference", type=Path, help="another study's JSON to compare this one against")
    parser.add_argument("--name", help="the study's name in comparisons (default: the output's stem)")
    parser.add_argument("fit_flags", nargs=argparse.REMAINDER, help="after --: more fit flags")
    return parser


def run(args: argparse.Namespace) -> int:
    extra = [f for f in args.fit_flags if f != "--"]
    runs = args.runs or Path("runs") / "seeds" / args.output.stem
    record = study(args.config, args.seeds, args.data, args.output, runs, extra, args.reference, args.name)
    s = record["summary"]["test"]
    print(
        f"seeds: {len(record['seeds'])} seeds, test acc {s['acc']['mean']:.4f} ± {s['acc']['std']:.4f}, "
        f"macro-F1 {s['f1_macro']['mean']:.4f} ± {s['f1_macro']['std']:.4f}; {args.output}"
    )
    return 0
