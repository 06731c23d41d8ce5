"""The ``drift.html`` report: the checks as a table and the two samples' distributions as inline PNGs."""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from emotions_pl.monitor.drift_sample import Sample
from emotions_pl.plots import png_bytes


def figures(ref: Sample, cur: Sample, labels: Sequence[str]) -> dict[str, str]:
    """Base64 PNGs by title: text lengths always, label shares and scores when both sides have them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def lengths(ax: Any) -> None:
        bins = np.histogram_bin_edges(np.concatenate([ref.length, cur.length]), bins=30)
        ax.hist(ref.length, bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(cur.length, bins=bins, density=True, alpha=0.5, label="current")
        ax.set_xlabel("text length (characters)")

    def shares(ax: Any) -> None:
        x = np.arange(len(labels))
        for offset, (name, values) in zip(
            (-0.2, 0.2), (("reference", ref.label), ("current", cur.label)), strict=True
        ):
            counts = Counter(values)
            ax.bar(x + offset, [counts[n] / len(values) for n in labels], width=0.4, label=name)
        ax.set_xticks(x, labels)
        ax.set_ylabel("share")

    def scores(ax: Any) -> None:
        bins = np.linspace(0, 1, 21)
        ax.hist(ref.score, bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(cur.score, bins=bins, density=True, alpha=0.5, label="current")
        ax.set_xlabel("prediction score (top probability)")

    draws: dict[str, Callable[[Any], None]] = {"text length": lengths}
    if ref.label is not None and cur.label is not None:
        draws["labels"] = shares
    if ref.score is not None and cur.score is not None:
        draws["prediction scores"] = scores
    out = {}
    for title, draw in draws.items():
        # dpi 80 on the figure, since png_bytes saves at the figure's dpi: the images keep their size
        figure, ax = plt.subplots(figsize=(6, 3), dpi=80)
        draw(ax)
        ax.legend()
        figure.tight_layout()
        out[title] = base64.b64encode(png_bytes(figure)).decode()  # png_bytes closes the figure
    return out


def render_html(summary: dict[str, Any], images: dict[str, str]) -> str:
    def fmt(value: Any) -> str:
        return (
            "" if value is None else f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
        )

    rows = []
    for c in summary["checks"]:
        status = "skipped" if c["skipped"] else "DRIFT" if c["drift"] else "ok"
        rows.append(
            f"<tr class='{status.lower()}'><td>{c['name']}</td><td>{status}</td><td>{fmt(c['test'])}</td>"
            f"<td>{fmt(c['p_value'])}</td><td>{fmt(c['effect'])} <small>{fmt(c['effect_name'])}</small></td>"
            f"<td>{fmt(c['min_effect'])}</td><td>{fmt(c['skipped'] or json.dumps(c['details']))}</td></tr>"
        )
    verdict = "DRIFT" if summary["drift"] else "no drift"
    pictures = "".join(
        f"<figure><img src='data:image/png;base64,{png}' alt='{html.escape(title)}'>"
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for title, png in images.items()
    )
    ref, cur = summary["reference"], summary["current"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>emotions_pl drift: {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}} tr.drift{{background:#fdd}}
tr.skipped{{color:#888}} figure{{display:inline-block;margin:0 1em 1em 0}}</style></head><body>
<h1>Drift: {verdict}</h1>
<p>{summary["drifted"]} of {summary["checks_run"]} checks drifted (the job fails at {summary["threshold"]}).
A check drifts when p &lt; {summary["alpha"]} / {summary["checks_run"]} (Bonferroni)
and |effect| &ge; its floor.</p>
<p>Reference: {html.escape(ref["source"])} ({ref["rows"]} rows, {ref["kind"]})<br>
Current: {html.escape(cur["source"])} ({cur["rows"]} rows, {cur["kind"]})</p>
<table><tr><th>check</th><th>status</th><th>test</th><th>p-value</th><th>effect</th><th>floor</th>
<th>details</th></tr>{"".join(rows)}</table>
{pictures}
</body></html>
"""
