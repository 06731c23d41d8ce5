"""The promotion gate: ``export`` over a folder that already holds a model replaces it only when the
candidate is at least as good by a recorded test metric both exports share (or with ``--force``), and
records what it replaced and why.

The gate compares raw recorded macro-F1, not ``compare``'s verdict: a verdict needs both models'
predictions on the same rows, and the folder being replaced holds only its recorded scores. A run of
``compare OLD NEW --data DIR`` before the export is the paired check (docs/serving.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emotions_pl.artifact.predictor import INFO_FILE
from emotions_pl.errors import CheckFailed


class PromotionRefused(CheckFailed):
    """The output folder holds a better model than the candidate; nothing was replaced (exit 1)."""


# The promotion gate compares this test metric (macro-F1: the metric checkpoints are selected on).
GATE_METRIC = "f1_macro"


def gate_scores(info: dict[str, Any]) -> dict[str, float]:
    """The test ``GATE_METRIC`` values an export records, by basis, in the order the gate prefers them:
    fp32 scored by ``--data`` on a test file (named by its sha256), then the run's ``test`` metrics."""
    found = {}
    fp32 = (info.get("variants", {}).get("fp32") or {}).get("test") or {}
    if isinstance(fp32.get(GATE_METRIC), int | float):
        found[f"fp32 on the test file sha256 {fp32.get('sha256', '?')[:12]}"] = float(fp32[GATE_METRIC])
    test = (info.get("metrics") or {}).get("test") or {}
    if isinstance(test.get(f"test/{GATE_METRIC}"), int | float):
        found["the run's test metrics (run.json)"] = float(test[f"test/{GATE_METRIC}"])
    return found


def promotion(output: Path, info: dict[str, Any], force: bool = False) -> dict[str, Any] | None:
    """The promotion gate: ``None`` when ``output`` holds no export; otherwise what is being replaced and
    why. Raises ``PromotionRefused`` when the current model is better by a recorded test metric both
    exports share (or only the current one records one), unless ``force``."""
    path = output / INFO_FILE
    if not path.is_file():
        return None
    try:
        current = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        current = {}
    source = current.get("source_checkpoint") or {}
    record: dict[str, Any] = {
        "previous": {
            "name": current.get("name"),
            "created": current.get("created"),
            "source_checkpoint": {k: source.get(k) for k in ("path", "sha256", "epoch")},
        },
        "metric": f"test {GATE_METRIC}",
        "forced": False,
    }
    if source.get("sha256") and source.get("sha256") == info["source_checkpoint"]["sha256"]:
        record["decision"] = "re-export of the same checkpoint"
        return record
    new, old = gate_scores(info), gate_scores(current)
    basis = next((k for k in new if k in old), None)
    if basis is not None:
        record |= {"basis": basis, "previous_score": old[basis], "candidate_score": new[basis]}
        if new[basis] >= old[basis]:
            record["decision"] = (
                f"promoted: test {GATE_METRIC} {new[basis]:.4f} >= {old[basis]:.4f} ({basis})"
            )
            return record
        reason = (
            f"{output} holds a better model: test {GATE_METRIC} {old[basis]:.4f} against the candidate's "
            f"{new[basis]:.4f} ({basis})"
        )
    elif old:
        basis, value = next(iter(old.items()))
        record |= {"basis": basis, "previous_score": value, "candidate_score": None}
        reason = (
            f"{output} holds a model with a recorded test {GATE_METRIC} ({value:.4f}, {basis}) and the "
            "candidate records none to compare with it (run `test` on its checkpoint, or export with "
            "--data on the same test file)"
        )
    else:
        record["decision"] = f"replaced: the previous model records no test {GATE_METRIC} to compare"
        return record
    if not force:
        raise PromotionRefused(f"{reason}; nothing was replaced. Pass --force to replace it anyway.")
    record |= {"forced": True, "decision": f"forced (--force): {reason}"}
    return record
