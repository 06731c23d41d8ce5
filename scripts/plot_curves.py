"""Training curves of a pipeline run as one PNG for the docs (DVC's own `dvc plots show` makes HTML).

.venv/bin/python scripts/plot_curves.py --curves reports/curves --out docs/images/training_curves.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--curves", type=Path, default=Path("reports/curves"))
    parser.add_argument("--out", type=Path, default=Path("docs/images/training_curves.png"))
    args = parser.parse_args()
    train = pd.read_csv(args.curves / "train.csv")
    val = pd.read_csv(args.curves / "val.csv")
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(train["step"], train["train_loss"], label="train/loss", lw=1)
    loss_ax.plot(val["step"], val["val_loss"], "o-", label="val/loss")
    loss_ax.set(xlabel="step", ylabel="cross-entropy", title="loss")
    score_ax.plot(val["step"], val["val_acc"], "o-", label="val/acc")
    score_ax.plot(val["step"], val["val_f1_macro"], "o-", label="val/f1_macro")
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
