"""Reading labelled tables: split files (jsonl, csv, parquet) or folders of shards, and the hub, into
memory-mapped Arrow (``datasets``), handed to ``split_check`` for validation.

The one reader for training data, the ``data`` stage, ``evaluate``, ``robustness``, ``teacher`` and
``drift`` (which also reads the server's jsonl prediction logs with ``read_table``); everything a file
format decides (suffix, builder, row numbers) is here. ``read_splits`` is what scales (the rows stay
on disk); ``load_splits`` and ``read_split`` hand small callers pandas frames or lists.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pyarrow.parquet as pq

from emotions_pl import sources
from emotions_pl.files import sha256
from emotions_pl.schema import SPLITS
from emotions_pl.split_check import DataValidationError, Encode, check_columns, validated

FORMATS = (".jsonl", ".csv", ".parquet")
BUILDERS = {".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
ROW_OFFSET = {".jsonl": 1, ".csv": 2, ".parquet": 0}  # 0-based index -> line (jsonl), csv line 1 = header


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
        check_columns(header, str(files[0]))
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
    digest = sha256(*files)
    return datasets.Dataset.from_generator(
        _mixed_rows,
        gen_kwargs=dict(files=[str(f) for f in files], mixed=mixed, digest=digest),
        features=datasets.Features(
            {c: datasets.Value("string") if c in mixed else features[c] for c in ("text", "label")}
        ),
        cache_dir=str(cache_dir),
    )


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
        return validated(
            raw,
            where,
            label_names,
            origins=lambda: [(str(p), _count_rows(p), ROW_OFFSET[p.suffix]) for p in files],
            csv_labels=files[0].suffix == ".csv",
            json_columns=json_columns,
            num_proc=num_proc,
            encode=encode,
            encode_key=encode_key,
        )


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
        return validated(
            hub[split],
            f"{source}[{split}]",
            label_names,
            num_proc=num_proc,
            encode=encode,
            encode_key=encode_key,
        )


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
