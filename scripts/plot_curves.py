"""Training curves of a run as one PNG for the docs (DVC's own `dvc plots show` makes HTML).

Reads the run summary `fit` writes (`<run>/run.json`: the training loss per logged step and the
validation metrics per epoch), the same numbers the `evaluate` stage turns into `reports/curves/*.csv`:

    .venv/bin/python scripts/plot_curves.py --run runs/pipeline --out docs/images/training_curves.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from emotions_pl.train import summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=Path("runs/pipeline"), help="run folder or its run.json")
    parser.add_argument("--out", type=Path, default=Path("docs/images/training_curves.png"))
    args = parser.parse_args()
    path = args.run / summary.RUN_FILE if args.run.is_dir() else args.run
    run = summary.read(path)
    if not run.get("epochs"):
        sys.exit(f"{path}: no run summary with validation epochs (it is written when `fit` ends)")
    steps, losses = zip(*run["train_loss"], strict=True) if run.get("train_loss") else ((), ())
    epochs = run["epochs"]
    val_steps = [e["step"] for e in epochs]
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(steps, losses, label="train/loss", lw=1)
    loss_ax.plot(val_steps, [e.get("val/loss") for e in epochs], "o-", label="val/loss")
    loss_ax.set(xlabel="step", ylabel="cross-entropy", title="loss")
    score_ax.plot(val_steps, [e.get("val/acc") for e in epochs], "o-", label="val/acc")
    score_ax.plot(val_steps, [e.get("val/f1_macro") for e in epochs], "o-", label="val/f1_macro")
    score_ax.set(xlabel="step", title="validation")
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
