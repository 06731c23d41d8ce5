"""What a valid split is, checked in one batched ``map`` over its Arrow table: every row has a text
and a known label (``row_problem`` decides), the ``text`` and ``label`` columns exist, the split is
not empty and holds every class. A bad row is never dropped: the error names its file, its row and
the problem, on one line.

``tables`` reads the files (or shards, or the hub) and calls ``validated``; no file suffix is named
here, so adding a format touches ``tables`` alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from emotions_pl.errors import UserError
from emotions_pl.files import fingerprint
from emotions_pl.schema import label_index

MAX_PROBLEMS_SHOWN = 10
MAP_BATCH = 10_000  # rows per map call: big batches keep the Rust tokenizer's threads busy
PROBLEM = "_problem"  # the map's per-row verdict: "" when the row is good
LABEL_INDEX = "_label"  # a new name: map would cast the index back to the source's label type

# Extra columns computed from a batch of (good) texts in the validating map, e.g. token ids.
Encode = Callable[[list[str]], dict[str, pa.Array]]
# The files a table was read from, in order: (name, rows, offset that turns a 0-based index into the
# file's row number) each. Asked only once a row is bad, since counting reads every file again.
Origins = Callable[[], list[tuple[str, int, int]]]


class DataValidationError(UserError, ValueError):
    """The data cannot be trusted; the message names the file, the row and the problem."""


def row_problem(text: Any, label: Any, label_names: Sequence[str]) -> tuple[int, str | None]:
    """The label index of one row and what is wrong with it (``None`` when nothing is): the one
    definition of a good row."""
    problems = []
    if not isinstance(text, str) or not text.strip():
        problems.append(f"empty or non-text 'text' ({text!r})")
    index = label_index(label, label_names)
    if index is None:
        if not isinstance(label, bool) and isinstance(label, int | float) and float(label).is_integer():
            problems.append(f"label {label!r} is outside 0..{len(label_names) - 1}")
        else:
            problems.append(f"label {label!r} is not one of {list(label_names)}")
    return (-1 if index is None else index), "; ".join(problems) or None


def _bad_rows(where: str, problems: list[str], total: int) -> DataValidationError:
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = f" (and {total - MAX_PROBLEMS_SHOWN} more)" if total > MAX_PROBLEMS_SHOWN else ""
    return DataValidationError(f"{where}: {total} bad row(s): {shown}{more}.")


def check_columns(columns: Sequence[str], where: str) -> None:
    missing = [c for c in ("text", "label") if c not in columns]
    if missing:
        raise DataValidationError(
            f"{where}: missing column(s) {missing}; found {list(columns)}. "
            "Each split needs a 'text' and a 'label' column."
        )


def _check_classes(counts: np.ndarray, where: str, label_names: Sequence[str]) -> None:
    absent = [label_names[k] for k in range(len(label_names)) if counts[k] == 0]
    if absent:
        raise DataValidationError(
            f"{where}: no examples of class(es) {absent}; the model expects all of {list(label_names)}."
        )


def _csv_label(value: str) -> Any:
    """A csv label as pandas would have read it: a number when it is one, else the name."""
    try:
        return float(value) if "." in value else int(value)
    except ValueError:
        return value


def _surely_good(
    batch: pa.Table, label_names: Sequence[str], digit_labels: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Label indices, and which rows are good beyond doubt, computed in Arrow: a text with an ASCII
    letter or digit, a label that is an index in range or an exact name (or digits, where a string
    label is read as a number: csv, and JSON text). Every other row goes through ``row_problem``,
    which alone decides; this only spares the common rows."""
    text, label = batch.column("text"), batch.column("label")
    good = np.zeros(len(batch), dtype=bool)
    index = np.full(len(batch), -1, dtype=np.int64)
    if not pa.types.is_string(text.type) and not pa.types.is_large_string(text.type):
        return index, good
    has_text = pc.fill_null(pc.match_substring_regex(text, "[A-Za-z0-9]"), False).to_numpy(
        zero_copy_only=False
    )
    if pa.types.is_integer(label.type):
        values = pc.fill_null(label, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    elif pa.types.is_string(label.type) or pa.types.is_large_string(label.type):
        found = pc.index_in(label, value_set=pa.array(list(label_names))).cast(pa.int64())
        if digit_labels:
            digits = pc.fill_null(pc.match_substring_regex(label, "^[0-9]{1,3}$"), False)
            found = pc.coalesce(found, pc.if_else(digits, label, None).cast(pa.int64()))
        values = pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        return index, good
    good = has_text & (values >= 0) & (values < len(label_names))
    index[good] = values[good]
    return index, good


def _check_batch(
    batch: pa.Table,
    label_names: Sequence[str],
    csv_labels: bool,
    json_columns: Sequence[str],
    encode: Encode | None,
) -> pa.Table:
    """One batch, as Arrow: the label indices, each row's problem ("" when good), ``encode``'s columns.

    ``json_columns`` are the columns whose values change type within a jsonl file (labels as names and
    as indices): ``datasets`` keeps each value as its JSON text, decoded here row by row."""
    if "text" in json_columns:
        index, good = np.full(len(batch), -1, dtype=np.int64), np.zeros(len(batch), dtype=bool)
    else:
        index, good = _surely_good(batch, label_names, csv_labels or "label" in json_columns)
    problems = np.full(len(batch), "", dtype=object)
    texts = batch.column("text").to_pylist()
    for i in np.flatnonzero(~good):
        text, label = texts[i], batch.column("label")[int(i)].as_py()
        if "text" in json_columns and text is not None:
            text = texts[i] = json.loads(text)
        if "label" in json_columns and label is not None:
            label = json.loads(label)
        elif csv_labels and isinstance(label, str):
            label = _csv_label(label)
        index[i], problem = row_problem(text, label, label_names)
        problems[i] = problem or ""
        good[i] = problem is None
    text_column = pa.array([str(t) for t in texts]) if "text" in json_columns else batch.column("text")
    out = {"text": text_column, LABEL_INDEX: pa.array(index), PROBLEM: pa.array(problems, pa.string())}
    if encode is not None:
        out.update(
            encode(texts if good.all() else [t if ok else "" for t, ok in zip(texts, good, strict=True)])
        )
    return pa.table(out)


def validated(
    raw: datasets.Dataset,
    where: str,
    label_names: Sequence[str],
    *,
    origins: Origins | None = None,
    csv_labels: bool = False,
    json_columns: Sequence[str] = (),
    num_proc: int = 1,
    encode: Encode | None = None,
    encode_key: Any = None,
) -> datasets.Dataset:
    """Validate (and encode) every row in one batched map: ``text``, ``label`` (index) and ``encode``'s
    columns, on disk; raise naming the first bad file's rows (``origins``; without them, ``where``'s).

    ``csv_labels``: labels are the strings a csv holds ("3" or "joy"), parsed as pandas would.
    ``encode_key`` stands for ``encode`` in the map's cache key."""
    check_columns(raw.column_names, where)
    if len(raw) == 0:
        raise DataValidationError(f"{where}: the split is empty.")
    checked = (
        raw.with_format("arrow")
        .map(
            _check_batch,
            batched=True,
            batch_size=MAP_BATCH,
            remove_columns=raw.column_names,
            fn_kwargs=dict(
                label_names=list(label_names),
                csv_labels=csv_labels,
                json_columns=list(json_columns),
                encode=encode,
            ),
            num_proc=num_proc if num_proc > 1 and len(raw) >= 10_000 else None,
            # The parts as one tuple, 16 hex digits like datasets' own fingerprints: the map caches
            # written so far keep their names.
            new_fingerprint=fingerprint((raw._fingerprint, list(label_names), encode_key), length=16),
        )
        .with_format(None)
    )
    bad = np.flatnonzero(pc.not_equal(checked.data.column(PROBLEM), "").to_numpy(zero_copy_only=False))
    if bad.size:
        files = origins() if origins is not None else [(where, len(raw), 0)]
        starts = np.cumsum([0, *(rows for _, rows, _ in files)])
        file = int(np.searchsorted(starts, bad[0], side="right") - 1)
        name, _, offset = files[file]
        mine = bad[(bad >= starts[file]) & (bad < starts[file + 1])]
        shown = mine[:MAX_PROBLEMS_SHOWN]
        rows = checked.select(shown)[PROBLEM]
        problems = [f"row {i - starts[file] + offset}: {p}" for i, p in zip(shown, rows, strict=True)]
        raise _bad_rows(name, problems, len(mine))
    labels = checked.data.column(LABEL_INDEX).to_numpy()
    _check_classes(np.bincount(labels, minlength=len(label_names)), where, label_names)
    return checked.remove_columns(PROBLEM).rename_column(LABEL_INDEX, "label")
