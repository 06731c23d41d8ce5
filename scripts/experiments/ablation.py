"""Recipe ablation for the imbalanced classes (love, surprise) on the real data. Prints a table, writes JSON.

Each variant is the offline experiment (MiniLM, lr 1e-4, 3 epochs, best epoch on val/f1_macro) with a few
`fit` overrides, trained with the same seed, then tested on its best checkpoint through the CLI:

    EMOTIONS_DATA_DIR=../shared/data/emotion python -m scripts.experiments.ablation \\
        --variants baseline,epochs_5

Every number comes from the run's run.json: the best checkpoint and its validation score that `fit` wrote,
and the test metrics that `test` added for that checkpoint. Resumable: a variant whose fit finished (its
run.json names a best checkpoint) is not trained again, one whose best checkpoint was tested is not tested
again, so an interrupted ablation picks up where it stopped. Runs go to ``runs/ablation/<variant>``, the
table to ``results/experiments/ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from emotions_pl.train import summary
from scripts.bench.common import table, write_json

EXPERIMENT = "configs/experiment/offline.yaml"
# Class weights from the train split's counts n_k (4666/5362/1304/2159/1937/572 over K = 6 classes):
# scikit-learn's "balanced" N / (K n_k), and its square root, a milder push towards love and surprise.
BALANCED = "[0.572,0.497,2.045,1.235,1.377,4.662]"
SQRT_BALANCED = "[0.756,0.705,1.430,1.111,1.173,2.159]"
# Every variant changes one thing in the offline experiment, which ships the baseline.
VARIANTS: dict[str, list[str]] = {
    "baseline": [],
    "class_weights_sqrt": ["--model.class_weights", SQRT_BALANCED],
    "class_weights_balanced": ["--model.class_weights", BALANCED],
    "label_smoothing": ["--model.label_smoothing", "0.1"],
    "layer_lr_decay": ["--model.layer_lr_decay", "0.85"],
    "epochs_5": ["--trainer.max_epochs", "5"],
    "bf16_mixed": ["--trainer.precision", "bf16-mixed"],  # a speed option: measures what accuracy it costs
}


def cli(command: str, run: Path, seed: int, overrides: list[str], *extra: str) -> None:
    args = [sys.executable, "-m", "emotions_pl", command, "--config", EXPERIMENT, "--seed_everything"]
    args += [str(seed), "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false"]
    log = run / f"{command}.log"
    with log.open("w") as out:
        if subprocess.run([*args, *overrides, *extra], stdout=out, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"{command} failed for {run}: see {log}")


def best_checkpoint(run: Path) -> tuple[dict[str, Any], Path | None]:
    """The run summary of a finished fit and its best checkpoint (``None`` before the fit finished)."""
    record = summary.read(run / summary.RUN_FILE)
    best = record.get("checkpoints", {}).get("best")
    return record, Path(best) if best and Path(best).is_file() else None


def run_variant(name: str, root: Path, seed: int) -> dict:
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    timing = run / "fit_seconds.txt"
    record, best = best_checkpoint(run)
    if best is None:
        start = time.perf_counter()
        cli("fit", run, seed, VARIANTS[name])
        timing.write_text(f"{time.perf_counter() - start:.0f}\n")
        record, best = best_checkpoint(run)
        if best is None:
            sys.exit(f"fit wrote no best checkpoint to {run / summary.RUN_FILE}")
    if "test" not in summary.checkpoint_metrics(record, best, None):
        cli("test", run, seed, VARIANTS[name], "--ckpt_path", str(best))
        record = summary.read(run / summary.RUN_FILE)
    test = summary.checkpoint_metrics(record, best, None)["test"]
    return {
        "variant": name,
        "overrides": " ".join(VARIANTS[name]),
        "fit_min": round(float(timing.read_text()) / 60, 1) if timing.exists() else None,
        "best_val_f1_macro": round(max(e["val/f1_macro"] for e in record["epochs"]), 4),
        "test_acc": round(test["test/acc"], 4),
        "test_f1_macro": round(test["test/f1_macro"], 4),
        "f1_love": round(test["test/f1/love"], 4),
        "f1_surprise": round(test["test/f1/surprise"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--root", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--output", "--out", type=Path, default=Path("results/experiments/ablation.json"))
    args = parser.parse_args()
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    rows = []
    for name in args.variants:
        rows.append(run_variant(name, args.root, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows, [c for c in rows[0] if c != "overrides"]))
    write_json(args.output, {"seed": args.seed, "experiment": EXPERIMENT, "rows": rows})


if __name__ == "__main__":
    main()
