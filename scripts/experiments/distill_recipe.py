"""Distillation side by side, in one run: the undistilled MiniLM per seed, their ensemble (the teacher),
and the students of each recipe per seed, every one scored on the validation and test splits here.

    python -m scripts.experiments.distill_recipe --data data/emotion   # members 42 1 2, recipe "kd", 3 seeds
    python -m scripts.experiments.distill_recipe --data data/emotion --seeds 42 \\
        --recipe t4_a07="--distill.temperature 4 --distill.alpha 0.7"   # a recipe variant, one seed

Steps, each skipped when its output exists (so a second call only scores, and a search adds rows):
1. the teacher members: ``fit --config configs/experiment/offline.yaml --seed_everything S`` into
   ``<root>/base_sS`` (the undistilled student of seed S, too);
2. their logits on the train split, once: ``teacher --teacher <member> ... --output <teacher file>``
   (the mean of their log-probabilities; ``--teacher-file``, default ``teachers/ensemble.npz``);
3. the students: ``fit --config configs/experiment/distill.yaml --distill.teacher_logits <teacher file>
   --seed_everything S <recipe flags>`` into ``<root>/<recipe>_sS``, timed;
4. scoring through the project's ``Predictor`` (the checkpoint's model, fp32): accuracy, macro-F1 and
   surprise F1 on validation and test, and the ensemble's from its members' mean log-probabilities.

Choose a recipe by its validation macro-F1 (mean over seeds); the test columns are there to be reported
for each finished recipe, not to choose by. Prints a table, writes JSON (``--output``, default
``results/experiments/distill.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from emotions_pl import metrics, tables
from emotions_pl.artifact import teacher
from emotions_pl.schema import LABELS
from scripts.bench import common

REPO = common.REPO

BASE_CONFIG = "configs/experiment/offline.yaml"
STUDENT_CONFIG = "configs/experiment/distill.yaml"
SPLITS = ("validation", "test")
SHORT = {"validation": "val", "test": "test"}
COLUMNS = ("acc", "f1_macro", "f1/surprise")


def parse_recipe(spec: str) -> tuple[str, list[str]]:
    name, sep, flags = spec.partition("=")
    if not sep or not name.isidentifier():
        raise SystemExit(f'error: --recipe {spec!r}: expected NAME=FLAGS (e.g. t4="--distill.temperature 4")')
    return name, shlex.split(flags)


def fit(run_dir: Path, flags: list[str], args: argparse.Namespace) -> float | None:
    """The run's best checkpoint at ``<run_dir>/best.ckpt``; the fit's seconds, or None when it existed."""
    if (run_dir / "best.ckpt").is_file():
        return None
    command = [sys.executable, "-m", "emotions_pl", "fit", *flags, "--data.source", str(args.data)]
    command += ["--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false"]
    print("$", shlex.join(command), flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (run_dir / "fit.log").open("w") as log:
        subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    seconds = time.perf_counter() - start
    best = json.loads((run_dir / "run.json").read_text())["checkpoints"]["best"]
    shutil.copyfile(best, run_dir / "best.ckpt")  # a stable name; no 270 MB read into memory
    (run_dir / "fit_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def fit_seconds(run_dir: Path) -> float | None:
    path = run_dir / "fit_seconds.txt"
    return float(path.read_text()) if path.is_file() else None


def log_probs(ckpt: Path, texts: dict[str, list[str]]) -> dict[str, np.ndarray]:
    model = teacher.predictor(teacher.identify(str(ckpt), teacher.HUB_MAX_LENGTH), "cpu")
    return {split: teacher.log_softmax(model.predict_logits(t, 64)) for split, t in texts.items()}


def scores(logp: dict[str, np.ndarray], targets: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    out = {}
    for split in SPLITS:
        values = metrics.report(np.exp(logp[split]), targets[split], LABELS, prefix="")["metrics"]
        out[split] = {k: round(values[k], 4) for k in COLUMNS}
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every score."""
    out: dict[str, Any] = {}
    for split in SPLITS:
        for k in COLUMNS:
            values = [r["scores"][split][k] for r in rows]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            out[f"{split}/{k}"] = {"mean": round(statistics.mean(values), 4), "std": round(sd, 4)}
    return out


def table(report: dict[str, Any]) -> str:
    rows = []
    for group in report["groups"]:
        seconds = [r["fit_seconds"] for r in group["runs"] if r.get("fit_seconds")]
        row = {
            "model": group["name"],
            "seeds": " ".join(str(r["seed"]) for r in group["runs"]),
            "fit s": f"{statistics.mean(seconds):.0f}" if seconds else None,
        }
        for split in SPLITS:
            for k in COLUMNS:
                m = group["summary"][f"{split}/{k}"]
                spread = f" ± {m['std']:.4f}" if len(group["runs"]) > 1 else ""
                row[f"{SHORT[split]} {k}"] = f"{m['mean']:.4f}{spread}"
        rows.append(row)
    return common.table(rows, list(rows[0]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", type=Path, default=Path("data/emotion"), help="data folder (train/validation/test)"
    )
    p.add_argument("--teacher-seeds", type=int, nargs="+", default=[42, 1, 2], help="the ensemble's members")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="student seeds of every recipe")
    p.add_argument(
        "--recipe", action="append", default=[], help='NAME="fit flags" (repeat; default kd="", the config)'
    )
    p.add_argument("--teacher-file", type=Path, default=Path("teachers/ensemble.npz"))
    p.add_argument("--root", type=Path, default=Path("runs/distill"), help="run folders")
    p.add_argument("--output", type=Path, default=Path("results/experiments/distill.json"))
    args = p.parse_args()
    recipes = [parse_recipe(spec) for spec in args.recipe] or [("kd", [])]

    members = [args.root / f"base_s{s}" for s in args.teacher_seeds]
    for seed, run_dir in zip(args.teacher_seeds, members, strict=True):
        fit(run_dir, ["--config", BASE_CONFIG, "--seed_everything", str(seed)], args)
    command = [sys.executable, "-m", "emotions_pl", "teacher", "--data", str(args.data)]
    command += [flag for m in members for flag in ("--teacher", str(m / "best.ckpt"))]
    subprocess.run([*command, "--output", str(args.teacher_file)], cwd=REPO, check=True)
    students = {name: [(s, args.root / f"{name}_s{s}") for s in args.seeds] for name, _ in recipes}
    for name, flags in recipes:
        for seed, run_dir in students[name]:
            base = ["--config", STUDENT_CONFIG, "--distill.teacher_logits", str(args.teacher_file)]
            fit(run_dir, [*base, "--seed_everything", str(seed), *flags], args)

    splits = tables.load_splits(str(args.data), LABELS)
    texts = {s: splits[s]["text"].tolist() for s in SPLITS}
    targets = {s: splits[s]["label"].tolist() for s in SPLITS}
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "teacher_file": str(args.teacher_file),
        "recipes": {name: flags for name, flags in recipes},
        "groups": [],
    }
    member_logp = {}
    for seed, run_dir in zip(args.teacher_seeds, members, strict=True):
        member_logp[seed] = log_probs(run_dir / "best.ckpt", texts)
    groups = [("undistilled (teacher members)", list(zip(args.teacher_seeds, members, strict=True)))]
    groups += [(f"student {name}", students[name]) for name, _ in recipes]
    for name, runs in groups:
        rows = []
        for seed, run_dir in runs:
            logp = member_logp.get(seed) if run_dir in members else log_probs(run_dir / "best.ckpt", texts)
            rows.append(
                {
                    "seed": seed,
                    "run": str(run_dir),
                    "fit_seconds": fit_seconds(run_dir),
                    "scores": scores(logp, targets),
                }
            )
        report["groups"].append({"name": name, "runs": rows, "summary": summary(rows)})
        if name.startswith("undistilled"):
            mean = {s: np.mean([member_logp[k][s] for k in member_logp], axis=0) for s in SPLITS}
            ensemble = [
                {
                    "seed": "+".join(map(str, member_logp)),
                    "run": "mean log-probs",
                    "scores": scores(mean, targets),
                }
            ]
            report["groups"].append(
                {"name": "teacher (ensemble)", "runs": ensemble, "summary": summary(ensemble)}
            )
    common.write_json(args.output, report)
    print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
