"""The pictures: the confusion matrix (training callback and ``evaluate``) and the reliability diagram
(``evaluate``)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_figure(counts: Any, labels: Sequence[str], title: str) -> Any:
    """A heat map coloured by the share of each true class (rows), so rare classes read too; raw counts
    in the cells. Returns a matplotlib Figure (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(counts, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    accuracy = float(np.trace(counts) / max(int(counts.sum()), 1))
    figure, axes = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(len(labels))
    axes.set_xticks(ticks, labels, rotation=45, ha="right")
    axes.set_yticks(ticks, labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{title} · accuracy {accuracy:.3f}")
    for (i, j), count in np.ndenumerate(counts):
        color = "white" if shares[i, j] > 0.5 else "black"
        axes.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    figure.colorbar(image, ax=axes, label="share of true class")
    figure.tight_layout()
    return figure


def reliability_figure(curves: dict[str, dict[str, list[dict[str, Any]]]], title: str) -> Any:
    """One panel per variant: accuracy against mean confidence per bin (``metrics.reliability_bins``) for
    each stage (``before`` / ``after`` scaling), the diagonal of perfect calibration, and the share of
    texts per bin (of the last stage) as bars. ``curves``: variant -> legend label of a stage -> bins.
    Returns a matplotlib Figure (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 4.2), dpi=100, squeeze=False)
    for axes, (variant, stages) in zip(panels[0], curves.items(), strict=True):
        axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect")
        for stage, bins in stages.items():
            full = [b for b in bins if b["count"]]
            axes.plot(
                [b["confidence"] for b in full],
                [b["accuracy"] for b in full],
                marker="o",
                markersize=3,
                label=stage,
            )
        last = list(stages.values())[-1]
        total = max(sum(b["count"] for b in last), 1)
        axes.bar(
            [(b["lower"] + b["upper"]) / 2 for b in last],
            [b["count"] / total for b in last],
            width=last[0]["upper"] - last[0]["lower"],
            color="tab:blue",
            alpha=0.15,
            label="share of texts",
        )
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("confidence (top score)")
        axes.set_ylabel("accuracy")
        axes.set_title(variant)
        axes.legend(loc="upper left", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def png_bytes(figure: Any) -> bytes:
    """The figure as PNG bytes (no timestamp metadata, so the same figure gives the same bytes)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()
