"""The confusion-matrix picture, drawn one way for the training callback and for ``evaluate``."""

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


def png_bytes(figure: Any) -> bytes:
    """The figure as PNG bytes (no timestamp metadata, so the same figure gives the same bytes)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()
