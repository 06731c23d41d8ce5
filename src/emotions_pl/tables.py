"""Reading labelled tables: split files (jsonl, csv, parquet) or folders of shards, and the hub, into
memory-mapped Arrow (``datasets``), validated by a batched ``map`` with row-numbered errors.

The one reader for training data, the ``data`` stage, ``evaluate``, ``robustness``, ``teacher`` and
``drift`` (which also reads the server's jsonl prediction logs with ``read_table``). A bad row is
never dropped: the error names the file, the row and the problem. ``read_splits`` is what scales (the
rows stay on disk); ``load_splits`` and ``read_split`` hand small callers pandas frames or lists.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emotions_pl import sources
from emotions_pl.errors import UserError
from emotions_pl.schema import SPLITS, label_index

FORMATS = (".jsonl", ".csv", ".parquet")
BUILDERS = {".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
ROW_OFFSET = {".jsonl": 1, ".csv": 2, ".parquet": 0}  # 0-based index -> line (jsonl), csv line 1 = header
MAX_PROBLEMS_SHOWN = 10
MAP_BATCH = 10_000  # rows per map call: big batches keep the Rust tokenizer's threads busy
PROBLEM = "_problem"  # the map's per-row verdict: "" when the row is good
LABEL_INDEX = "_label"  # a new name: map would cast the index back to the source's label type

# Extra columns computed from a batch of (good) texts in the validating map, e.g. token ids.
Encode = Callable[[list[str]], dict[str, pa.Array]]


class DataValidationError(UserError, ValueError):
    """The data cannot be trusted; the message names the file, the row and the problem."""


def find_split_file(folder: Path, split: str) -> Path:
    """The one file of a split (``train.jsonl``); see ``split_files`` for folders of shards."""
    files = split_files(folder, split)
    if len(files) > 1:
        raise DataValidationError(f"{folder}: {split!r} split is sharded; pass one file instead.")
    return files[0]


def split_files(folder: Path, split: str) -> list[Path]:
    """A split's file (``train.jsonl``) or its shards (``train-*.parquet``, sorted), of one format."""
    if not folder.is_dir():
        raise DataValidationError(f"{folder}: no such data folder (it needs train/validation/test files).")
    candidates = [folder / f"{split}{ext}" for ext in FORMATS]
    single = [p for p in candidates if p.exists()]
    shards = {ext: sorted(folder.glob(f"{split}-*{ext}")) for ext in FORMATS}
    found = single + [folder / f"{split}-*{ext}" for ext, files in shards.items() if files]
    if not found:
        names = ", ".join(p.name for p in candidates)
        raise DataValidationError(
            f"{folder}: no {split!r} split; expected one of {names} (or shards such as {split}-*.jsonl)."
        )
    if len(found) > 1:
        raise DataValidationError(f"{folder}: {split!r} split is ambiguous: {', '.join(map(str, found))}.")
    return single or next(files for files in shards.values() if files)


def read_table(path: Path, skip_blank_lines: bool = False) -> tuple[pd.DataFrame, int]:
    """One small table in memory (prediction logs, whose columns differ from a split's); return the frame
    and the offset that turns a 0-based index into its row number.

    ``skip_blank_lines`` is for logs (a blank last line is normal there); data files must have none.
    """
    if not path.is_file():
        raise DataValidationError(f"{path}: no such file.")
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False, dtype={"text": str}), ROW_OFFSET[".csv"]
    if path.suffix == ".parquet":
        return pd.read_parquet(path), ROW_OFFSET[".parquet"]
    rows, index = [], []
    for number, row in _json_lines(path, skip_blank_lines):
        rows.append(row)
        index.append(number - 1)
    return pd.DataFrame(rows, index=index), ROW_OFFSET[".jsonl"]


def _json_lines(path: Path, skip_blank_lines: bool = False) -> Iterator[tuple[int, dict]]:
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
            yield number, row


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


def _check_columns(columns: Sequence[str], where: str) -> None:
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


def _count_rows(path: Path) -> int:
    """Rows of one file without loading it, so that a row of a sharded split is named by its own file
    and line; a jsonl's blank lines fail here (Arrow's reader would skip them and shift the numbers)."""
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            return max(sum(1 for row in csv.reader(f) if row) - 1, 0)  # pandas skips blank lines too
    rows = 0
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                raise DataValidationError(f"{path} line {number}: blank line.")
            rows += 1
    return rows


def _diagnose_jsonl(path: Path) -> None:
    """Why Arrow could not read a jsonl file, by line: bad JSON or not an object."""
    for _ in _json_lines(path):
        pass


def _load_files(files: list[Path], cache_dir: Path) -> tuple[datasets.Dataset, list[str]]:
    """The raw table of a split's files, and the columns that hold JSON text (see ``_reread_mixed``)."""
    kwargs: dict[str, Any] = {}
    if files[0].suffix == ".csv":
        # Every column as the strings written ("3" or "joy"; "" stays empty, not NaN), so that shards
        # agree on one schema; labels are parsed per row in the map, as pandas would have read them.
        with files[0].open(encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
        _check_columns(header, str(files[0]))
        strings = datasets.Features({name: datasets.Value("string") for name in header})
        kwargs = dict(keep_default_na=False, features=strings)
    try:
        raw = datasets.load_dataset(
            BUILDERS[files[0].suffix],
            data_files=[str(f) for f in files],
            split="train",
            cache_dir=str(cache_dir),
            **kwargs,
        )
        mixed = [c for c in ("text", "label") if isinstance(raw.features.get(c), datasets.Json)]
        return (_reread_mixed(files, mixed, raw.features, cache_dir), mixed) if mixed else (raw, [])
    except (ValueError, TypeError, datasets.exceptions.DatasetGenerationError) as e:
        for path in files:
            if path.suffix == ".jsonl":
                _diagnose_jsonl(path)
        raise DataValidationError(
            f"{files[0].parent}: cannot read {', '.join(f.name for f in files[:3])}"
            f"{' ...' if len(files) > 3 else ''} as one table ({e})."
        ) from e


def _mixed_rows(files: list[str], mixed: list[str], digest: str) -> Iterator[dict[str, Any]]:
    for name in files:
        for _, row in _json_lines(Path(name)):
            yield {c: json.dumps(row.get(c)) if c in mixed else row.get(c) for c in ("text", "label")}


def _reread_mixed(
    files: list[Path], mixed: list[str], features: datasets.Features, cache_dir: Path
) -> datasets.Dataset:
    """A jsonl split whose ``mixed`` columns change type between lines (labels as names and as
    indices), read again line by line with each such value as its exact JSON text: ``datasets`` would
    keep ``"3"`` and ``3`` alike. Still written to Arrow in batches; ``digest`` keys its cache."""
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    return datasets.Dataset.from_generator(
        _mixed_rows,
        gen_kwargs=dict(files=[str(f) for f in files], mixed=mixed, digest=digest),
        features=datasets.Features(
            {c: datasets.Value("string") if c in mixed else features[c] for c in ("text", "label")}
        ),
        cache_dir=str(cache_dir),
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


def _validated(
    raw: datasets.Dataset,
    where: str,
    files: list[Path],
    label_names: Sequence[str],
    num_proc: int,
    encode: Encode | None,
    encode_key: Any,
    json_columns: Sequence[str] = (),
) -> datasets.Dataset:
    """Validate (and encode) every row in one batched map; raise naming the first bad file's rows."""
    _check_columns(raw.column_names, where)
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
                csv_labels=bool(files) and files[0].suffix == ".csv",
                json_columns=list(json_columns),
                encode=encode,
            ),
            num_proc=num_proc if num_proc > 1 and len(raw) >= 10_000 else None,
            new_fingerprint=_fingerprint(raw._fingerprint, list(label_names), encode_key),
        )
        .with_format(None)
    )
    bad = np.flatnonzero(pc.not_equal(checked.data.column(PROBLEM), "").to_numpy(zero_copy_only=False))
    if bad.size:
        counts = [_count_rows(p) for p in files] if files else [len(raw)]
        starts = np.cumsum([0, *counts])
        file = int(np.searchsorted(starts, bad[0], side="right") - 1)
        mine = bad[(bad >= starts[file]) & (bad < starts[file + 1])]
        offset = ROW_OFFSET[files[file].suffix] if files else 0
        shown = mine[:MAX_PROBLEMS_SHOWN]
        rows = checked.select(shown)[PROBLEM]
        problems = [f"row {i - starts[file] + offset}: {p}" for i, p in zip(shown, rows, strict=True)]
        raise _bad_rows(str(files[file]) if files else where, problems, len(mine))
    labels = checked.data.column(LABEL_INDEX).to_numpy()
    _check_classes(np.bincount(labels, minlength=len(label_names)), where, label_names)
    return checked.remove_columns(PROBLEM).rename_column(LABEL_INDEX, "label")


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


@contextmanager
def quiet() -> Iterator[None]:
    """No progress bars from ``datasets``: an error stays one line, logs stay readable."""
    was = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was:
            datasets.enable_progress_bars()


def read_files(
    files: list[Path],
    label_names: Sequence[str],
    *,
    where: str | None = None,
    num_proc: int = 1,
    encode: Encode | None = None,
    encode_key: Any = None,
    cache_dir: Path | None = None,
) -> datasets.Dataset:
    """One split from its file or shards: ``text``, ``label`` (index) and ``encode``'s columns, on disk."""
    if where is None:
        first = files[0]
        where = (
            str(first) if len(files) == 1 else f"{first.parent}/{first.name.split('-')[0]}-*{first.suffix}"
        )
    for path in files:
        if not path.is_file():
            raise DataValidationError(f"{path}: no such file.")
        if path.suffix == ".jsonl":
            _count_rows(path)  # blank lines first: Arrow would skip them
    with quiet():
        raw, json_columns = _load_files(files, cache_dir or sources.cache_home() / "datasets")
        return _validated(raw, where, files, label_names, num_proc, encode, encode_key, json_columns)


def hub_splits(source: str, label_names: Sequence[str]) -> datasets.DatasetDict:
    """The raw splits of a hub data set (downloaded once into the Hugging Face cache)."""
    sources.check_hub(
        source,
        "data set",
        f"pass a local folder with --data.source or set {sources.DATA_DIR_ENV}",
        repo_type="dataset",
    )
    hub = datasets.load_dataset(source)
    names = hub["train"].features["label"].names
    if list(names) != list(label_names):
        raise DataValidationError(
            f"{source}: the data set's labels {names} differ from data.label_names {list(label_names)}."
        )
    return hub


def read_hub_split(
    hub: datasets.DatasetDict,
    source: str,
    split: str,
    label_names: Sequence[str],
    *,
    num_proc: int = 1,
    encode: Encode | None = None,
    encode_key: Any = None,
) -> datasets.Dataset:
    """One split of a loaded hub data set, checked (and encoded) like a local file."""
    with quiet():
        return _validated(hub[split], f"{source}[{split}]", [], label_names, num_proc, encode, encode_key)


def local_folder(source: str) -> Path | None:
    """The data folder a source names, or ``None`` for a hub id."""
    folder = Path(sources.resolve(source))
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise DataValidationError(f"{folder}: data source must be a folder with train/validation/test files.")
    return folder


def read_splits(
    source: str,
    label_names: Sequence[str],
    *,
    num_proc: int = 1,
    encode: Encode | None = None,
    encode_key: Any = None,
    cache_dir: Path | None = None,
    hub: datasets.DatasetDict | None = None,
) -> dict[str, datasets.Dataset]:
    """train/validation/test from a local folder or a hub id (or its already loaded ``hub`` splits)."""
    folder = local_folder(source)
    if folder is not None:
        files = {split: split_files(folder, split) for split in SPLITS}  # all three exist before any work
        return {
            split: read_files(
                found,
                label_names,
                num_proc=num_proc,
                encode=encode,
                encode_key=encode_key,
                cache_dir=cache_dir,
            )
            for split, found in files.items()
        }
    hub = hub or hub_splits(source, label_names)
    return {
        split: read_hub_split(
            hub, source, split, label_names, num_proc=num_proc, encode=encode, encode_key=encode_key
        )
        for split in SPLITS
    }


def load_splits(source: str, label_names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The three splits as frames (``text``, integer ``label``), for callers that fit in memory."""
    return {split: ds.to_pandas() for split, ds in read_splits(source, label_names).items()}


def read_split(path: Path, label_names: Sequence[str], split: str = "test") -> tuple[list[str], list[int]]:
    """Texts and label indices of a split file, or of a data folder's ``split`` file(s)."""
    if not path.exists():
        raise DataValidationError(f"{path}: no such data file or folder.")
    ds = read_files(split_files(path, split) if path.is_dir() else [path], label_names)
    return ds.data.column("text").to_pylist(), ds.data.column("label").to_pylist()
