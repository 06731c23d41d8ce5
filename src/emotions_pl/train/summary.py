"""The run summary, ``<run>/run.json``: what a fit produced, for the stages after it.

Written by ``callbacks.RunSummary`` (atomically, on the global-zero rank) when ``fit`` ends, and updated
when ``test`` scores a checkpoint of the run. ``export`` and ``evaluate`` read it with the checkpoint;
nothing reads the logger's files. Reading needs no Lightning.

Fields: ``checkpoints`` (best and last paths, the monitored metric and its best score), ``epochs``
(validation metrics per epoch), ``train_loss`` (``[step, loss]`` at the logging interval), ``metrics``
(the final callback metrics), ``model`` and ``data`` (the hyper-parameters, ``max_length`` and the
label names among them), ``trainer`` (the settings a model card shows) and ``tests`` (test metrics
per checkpoint path).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"


def find(ckpt_path: Path) -> Path | None:
    """The run summary of a checkpoint: beside it (``<run>/best.ckpt``) or one up (``<run>/checkpoints/``)."""
    for folder in (ckpt_path.parent, ckpt_path.parent.parent):
        if (folder / RUN_FILE).is_file():
            return folder / RUN_FILE
    return None


def read(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def same_file(a: str | os.PathLike | None, b: Path) -> bool:
    try:
        return a is not None and Path(a).exists() and os.path.samefile(a, b)
    except OSError:
        return False


def checkpoint_metrics(summary: dict[str, Any], ckpt_path: Path, epoch: int | None) -> dict[str, Any]:
    """Validation metrics of the checkpoint's epoch and test metrics of runs that tested this file."""
    found: dict[str, Any] = {}
    for record in summary.get("epochs", []):
        if record.get("epoch") == epoch:
            found["validation"] = dict(record)
    for record in summary.get("tests", []):
        if same_file(record.get("ckpt_path"), ckpt_path):
            found["test"] = dict(record["metrics"])
    return found
