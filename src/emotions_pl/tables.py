"""Reading labelled tables: split files (jsonl, csv, parquet) with row-numbered validation errors, and
the three splits of a data set from a folder or the hub (``load_splits``).

The one reader for training data, the ``data`` stage, ``evaluate``, ``robustness`` and ``drift``
(which also reads the server's jsonl prediction logs). A bad row is never dropped: the error names
the file, the row and the problem.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from emotions_pl import sources
from emotions_pl.errors import UserError
from emotions_pl.schema import SPLITS, label_index

FORMATS = (".jsonl", ".csv", ".parquet")
MAX_PROBLEMS_SHOWN = 10


class DataValidationError(UserError, ValueError):
    """The data cannot be trusted; the message names the file, the row and the problem."""


def find_split_file(folder: Path, split: str) -> Path:
    if not folder.is_dir():
        raise DataValidationError(f"{folder}: no such data folder (it needs train/validation/test files).")
    candidates = [folder / f"{split}{ext}" for ext in FORMATS]
    found = [p for p in candidates if p.exists()]
    if not found:
        names = ", ".join(p.name for p in candidates)
        raise DataValidationError(f"{folder}: no {split!r} split; expected one of {names}.")
    if len(found) > 1:
        raise DataValidationError(f"{folder}: {split!r} split is ambiguous: {', '.join(map(str, found))}.")
    return found[0]


def read_table(path: Path, skip_blank_lines: bool = False) -> tuple[pd.DataFrame, int]:
    """Read one table; return the frame and the offset that turns a 0-based index into its row number.

    ``skip_blank_lines`` is for logs (a blank last line is normal there); data files must have none.
    """
    if not path.is_file():
        raise DataValidationError(f"{path}: no such file.")
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False, dtype={"text": str}), 2  # line 1 is the header
    if path.suffix == ".parquet":
        return pd.read_parquet(path), 0
    rows, index = [], []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                if skip_blank_lines:
                    continue
                raise DataValidationError(f"{path} line {number}: blank line.")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataValidationError(f"{path} line {number}: invalid JSON ({e.msg}).") from e
            if not isinstance(row, dict):
                raise DataValidationError(f"{path} line {number}: expected a JSON object.")
            rows.append(row)
            index.append(number - 1)
    return pd.DataFrame(rows, index=index), 1


def validate_split(frame: pd.DataFrame, where: str, label_names: Sequence[str], row_offset: int) -> list[int]:
    """Check every row and return the labels as indices; raise naming each bad row (never drop it)."""
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"{where}: missing column(s) {missing}; found {list(frame.columns)}. "
            "Each split needs a 'text' and a 'label' column."
        )
    if frame.empty:
        raise DataValidationError(f"{where}: the split is empty.")
    problems, labels = [], []
    for i, text, label in zip(frame.index, frame["text"], frame["label"], strict=True):
        row = f"row {i + row_offset}"
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{row}: empty or non-text 'text' ({text!r})")
        index = label_index(label, label_names)
        if index is not None:
            labels.append(index)
        elif not isinstance(label, bool) and isinstance(label, int | float) and float(label).is_integer():
            problems.append(f"{row}: label {label!r} is outside 0..{len(label_names) - 1}")
        else:
            problems.append(f"{row}: label {label!r} is not one of {list(label_names)}")
    if problems:
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = (
            f" (and {len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        )
        raise DataValidationError(f"{where}: {len(problems)} bad row(s): {shown}{more}.")
    absent = [label_names[k] for k in range(len(label_names)) if k not in set(labels)]
    if absent:
        raise DataValidationError(
            f"{where}: no examples of class(es) {absent}; the model expects all of {list(label_names)}."
        )
    return labels


def read_split(path: Path, label_names: Sequence[str], split: str = "test") -> tuple[list[str], list[int]]:
    """Texts and label indices of a split file, or of a data folder's ``split`` file."""
    if not path.exists():
        raise DataValidationError(f"{path}: no such data file or folder.")
    if path.is_dir():
        path = find_split_file(path, split)
    frame, offset = read_table(path)
    labels = validate_split(frame, str(path), label_names, offset)
    return frame["text"].tolist(), labels


def load_splits(source: str, label_names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Load train/validation/test as frames with integer labels, from a local folder or a hub id."""
    folder = Path(sources.resolve(source))
    if folder.exists():
        if not folder.is_dir():
            raise DataValidationError(
                f"{folder}: data source must be a folder with train/validation/test files."
            )
        tables = {}
        for split in SPLITS:
            path = find_split_file(folder, split)
            frame, offset = read_table(path)
            labels = validate_split(frame, str(path), label_names, offset)
            tables[split] = pd.DataFrame({"text": frame["text"].tolist(), "label": labels})
        return tables
    sources.check_hub(
        source,
        "data set",
        f"pass a local folder with --data.source or set {sources.DATA_DIR_ENV}",
        repo_type="dataset",
    )
    import datasets  # the hub path only: local folders need no Arrow stack

    hub = datasets.load_dataset(source)
    names = hub["train"].features["label"].names
    if list(names) != list(label_names):
        raise DataValidationError(
            f"{source}: the data set's labels {names} differ from data.label_names {list(label_names)}."
        )
    return {
        split: pd.DataFrame(
            {
                "text": hub[split]["text"],
                "label": validate_split(hub[split].to_pandas(), f"{source}[{split}]", label_names, 0),
            }
        )
        for split in SPLITS
    }
