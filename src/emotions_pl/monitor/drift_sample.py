"""Loading one side of a ``drift`` comparison: data files or the server's prediction logs, reduced to a
``Sample``; seeded subsampling; the model's predictions in place of stored labels and scores.

A prediction log line carries LOG_LENGTH, LOG_LABEL and LOG_SCORE (the names in schema.py); a data file
has ``text`` instead.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emotions_pl.errors import UserError
from emotions_pl.schema import LABEL as LOG_LABEL
from emotions_pl.schema import LOG_TEXT_CHARS as LOG_LENGTH
from emotions_pl.schema import SCORE as LOG_SCORE
from emotions_pl.schema import label_index
from emotions_pl.tables import FORMATS, DataValidationError, find_split_file, read_table


@dataclass
class Sample:
    """One side of the comparison, reduced to what the checks need."""

    source: str
    kind: str  # "data" or "log"
    length: np.ndarray
    text: list[str] | None = None
    label: list[str] | None = None
    label_kind: str | None = None  # "true" or "predicted"
    score: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.length)


def data_files(path: Path, role: str) -> list[Path]:
    """A file, or a folder's files: a data folder's train split, else every jsonl/csv/parquet inside."""
    if not path.exists():
        raise UserError(f"--{role}: {path} does not exist.")
    if path.is_file():
        return [path]
    if role == "reference" and any((path / f"train{ext}").exists() for ext in FORMATS):
        return [find_split_file(path, "train")]
    files = sorted(p for p in path.iterdir() if p.is_file() and is_table(p))
    if not files:
        raise DataValidationError(f"--{role}: {path} holds no .jsonl, .csv or .parquet files.")
    return files


def is_table(path: Path) -> bool:
    """Data and log files, including rotated logs such as ``predictions.jsonl.1``."""
    return path.suffix in FORMATS or bool(re.fullmatch(r".*\.jsonl\.\d+", path.name))


def label_name(value: Any, labels: Sequence[str], where: str) -> str:
    index = label_index(value, labels)
    if index is None:
        raise DataValidationError(
            f"{where}: label {value!r} is not one of {list(labels)} or an index into them."
        )
    return labels[index]


def load_sample(paths: Sequence[Path], role: str, labels: Sequence[str]) -> Sample:
    """Read data files (``text``, optional ``label``) or prediction logs (``text_length``, ``label``,
    ``score``, and ``text`` when the server was asked to keep it)."""
    files = [f for p in paths for f in data_files(p, role)]
    texts: list[str] = []
    lengths: list[int] = []
    names: list[str] = []
    scores: list[float] = []
    kinds = set()
    for path in files:
        frame, offset = read_table(path, skip_blank_lines=True)
        if frame.empty:
            continue
        kind = "data" if "text" in frame.columns and LOG_LENGTH not in frame.columns else "log"
        if kind == "log" and LOG_LENGTH not in frame.columns:
            raise DataValidationError(
                f"{path}: needs a 'text' column (data) or '{LOG_LENGTH}' (prediction log); "
                f"found {list(frame.columns)}."
            )
        kinds.add(kind)
        if len(kinds) > 1:
            raise DataValidationError(
                f"--{role}: mixes data files and prediction logs ({path}); pass one kind."
            )
        if kind == "log" and LOG_LABEL in frame.columns:
            frame = frame[frame[LOG_LABEL].notna()]  # failed requests carry no prediction
        for i, row in enumerate(frame.to_dict("records")):
            where = f"{path} row {frame.index[i] + offset}"
            if kind == "data":
                text = row["text"]
                if not isinstance(text, str):
                    raise DataValidationError(f"{where}: 'text' is {text!r}, not a string.")
                texts.append(text)
                lengths.append(len(text))
            else:
                length = row[LOG_LENGTH]
                if isinstance(length, bool) or not isinstance(length, int | float) or length < 0:
                    raise DataValidationError(f"{where}: '{LOG_LENGTH}' is {length!r}, not a length.")
                lengths.append(int(length))
                if isinstance(row.get("text"), str):
                    texts.append(row["text"])
            if "label" in row and row["label"] is not None:
                names.append(label_name(row["label"], labels, where))
            if kind == "log" and isinstance(row.get(LOG_SCORE), int | float):
                scores.append(float(row[LOG_SCORE]))
    if not lengths:
        raise DataValidationError(f"--{role}: {', '.join(map(str, files))} hold no rows.")
    n = len(lengths)
    (kind,) = kinds
    return Sample(
        source=", ".join(map(str, files)),
        kind=kind,
        length=np.asarray(lengths, dtype=float),
        text=texts if len(texts) == n else None,
        label=names if len(names) == n else None,
        label_kind=("true" if kind == "data" else "predicted") if len(names) == n else None,
        score=np.asarray(scores) if len(scores) == n else None,
    )


def subsample(sample: Sample, max_rows: int, seed: int) -> Sample:
    """Keep at most ``max_rows`` rows (seeded) so that predicting and testing stay fast."""
    if sample.size <= max_rows:
        return sample
    keep = sorted(random.Random(seed).sample(range(sample.size), max_rows))

    def pick(values: Any) -> Any:
        if values is None:
            return None
        return values[keep] if isinstance(values, np.ndarray) else [values[i] for i in keep]

    return Sample(
        sample.source,
        sample.kind,
        pick(sample.length),
        pick(sample.text),
        pick(sample.label),
        sample.label_kind,
        pick(sample.score),
    )


def add_predictions(sample: Sample, predictor: Any) -> None:
    """Replace labels and scores by the model's predictions (needs the texts)."""
    if sample.text is None:
        return
    probs = predictor.predict_proba(sample.text)
    sample.label = [predictor.labels[i] for i in probs.argmax(1)]
    sample.label_kind = "predicted"
    sample.score = probs.max(1)
