"""The emotion data set as a LightningDataModule: load, validate, tokenize once, batch by length."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import DistributedLengthGroupedSampler

from emotions_pl import sources

LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
SPLITS = ("train", "validation", "test")
FORMATS = (".jsonl", ".csv", ".parquet")
CACHE_ENV = "EMOTIONS_CACHE_DIR"
MAX_PROBLEMS_SHOWN = 10


class DataValidationError(ValueError):
    """The data cannot be trusted for training; the message names the file, the row and the problem."""


def find_split_file(folder: Path, split: str) -> Path:
    candidates = [folder / f"{split}{ext}" for ext in FORMATS]
    found = [p for p in candidates if p.exists()]
    if not found:
        names = ", ".join(p.name for p in candidates)
        raise DataValidationError(f"{folder}: no {split!r} split; expected one of {names}.")
    if len(found) > 1:
        raise DataValidationError(f"{folder}: {split!r} split is ambiguous: {', '.join(map(str, found))}.")
    return found[0]


def read_table(path: Path) -> tuple[pd.DataFrame, int]:
    """Read one split file; return the frame and the offset that turns a 0-based index into its row number."""
    if path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    raise DataValidationError(f"{path} line {number}: blank line.")
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataValidationError(f"{path} line {number}: invalid JSON ({e.msg}).") from e
                if not isinstance(rows[-1], dict):
                    raise DataValidationError(f"{path} line {number}: expected a JSON object.")
        return pd.DataFrame(rows), 1
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False, dtype={"text": str}), 2  # line 1 is the header
    return pd.read_parquet(path), 0


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
    by_name = {name: i for i, name in enumerate(label_names)}
    problems, labels = [], []
    for i, (text, label) in enumerate(zip(frame["text"], frame["label"], strict=True)):
        row = f"row {i + row_offset}"
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{row}: empty or non-text 'text' ({text!r})")
        if isinstance(label, str) and label.strip().lower() in by_name:
            labels.append(by_name[label.strip().lower()])
        elif not isinstance(label, bool) and isinstance(label, int | float) and float(label).is_integer():
            if 0 <= int(label) < len(label_names):
                labels.append(int(label))
            else:
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
        source, "data set", f"pass a local folder with --data.source or set {sources.DATA_DIR_ENV}"
    )
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


def fingerprint(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
    return digest.hexdigest()[:20]


class Collator:
    """Pad per batch; carry raw texts through for prediction output."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None):
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        texts = [f["text"] for f in features] if "text" in features[0] else None
        batch = self.pad([{k: v for k, v in f.items() if k != "text"} for f in features])
        if texts is not None:
            batch["text"] = texts
        return batch


class EmotionDataModule(pl.LightningDataModule):
    """Emotion tweets from the hub or a local folder, tokenized once and cached on disk.

    Args:
        source: hub id (``dair-ai/emotion``), a local folder with ``train``/``validation``/``test``
            files (jsonl, csv or parquet; ``text`` and ``label`` columns, labels as ints or names), or
            ``package:<module>/<folder>``. ``None`` reads the folder from ``$EMOTIONS_DATA_DIR``.
        tokenizer_name: linked by the CLI to ``model.model_name_or_path``; never set it separately.
        label_names: class names in index order.
        max_length: truncation length in tokens; batches are padded only to their longest text.
        group_by_length: bucket training batches by length (shuffled, seeded) to cut padding.
        cache_dir: where tokenized splits are kept (default ``$EMOTIONS_CACHE_DIR``, else
            ``~/.cache/emotions_pl``).
    """

    def __init__(
        self,
        source: str | None = "dair-ai/emotion",
        tokenizer_name: str = "distilbert-base-uncased",
        label_names: list[str] = LABELS,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        group_by_length: bool = True,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        predict_split: str = "test",
        cache_dir: str | None = None,
        seed: int = 42,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.label_names = list(label_names)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.splits: dict[str, datasets.Dataset] = {}
        self.cache_hits: dict[str, bool] = {}

    @property
    def source(self) -> str:
        source = self.hparams.source or os.environ.get(sources.DATA_DIR_ENV)
        if not source:
            raise DataValidationError(
                f"data.source is not set and ${sources.DATA_DIR_ENV} is empty: "
                "give a local data folder or a hub id such as dair-ai/emotion."
            )
        return source

    @property
    def cache_root(self) -> Path:
        default = os.environ.get(CACHE_ENV, Path.home() / ".cache" / "emotions_pl")
        return Path(self.hparams.cache_dir or default) / "tokenized"

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        name = self.hparams.tokenizer_name
        if not sources.is_local(name):
            sources.check_hub(name, "tokenizer", "point --model.model_name_or_path at a local model folder")
        return AutoTokenizer.from_pretrained(sources.resolve(name))

    def prepare_data(self) -> None:
        """Download once per node (hub sources); local folders need nothing."""
        if not sources.is_local(self.source):
            load_splits(self.source, self.label_names)
        self.load_tokenizer()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.tokenizer = self.load_tokenizer()
        tables = load_splits(self.source, self.label_names)
        tok_id = fingerprint(type(self.tokenizer).__name__, self.tokenizer.backend_tokenizer.to_str())
        for split, frame in tables.items():
            key = fingerprint(
                pd.util.hash_pandas_object(frame, index=False).values.tobytes(),
                tok_id,
                self.hparams.max_length,
            )
            self.splits[split] = self._tokenized(frame, self.cache_root / f"{split}-{key}", split)

    def _tokenized(self, frame: pd.DataFrame, path: Path, split: str) -> datasets.Dataset:
        """Tokenize a split, or load it from the cache; the cache is written by an atomic rename."""
        self.cache_hits[split] = path.exists()
        if path.exists():
            return datasets.load_from_disk(str(path))
        encoded = self.tokenizer(frame["text"].tolist(), truncation=True, max_length=self.hparams.max_length)
        dataset = datasets.Dataset.from_dict(
            {
                "text": frame["text"].tolist(),
                "input_ids": encoded["input_ids"],
                "attention_mask": encoded["attention_mask"],
                "labels": frame["label"].tolist(),
            }
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        dataset.save_to_disk(str(tmp))
        try:
            tmp.rename(path)
        except OSError:  # another process finished the same cache entry first
            shutil.rmtree(tmp, ignore_errors=True)
        return datasets.load_from_disk(str(path))

    def lengths(self, split: str) -> list[int]:
        return [len(ids) for ids in self.splits[split]["input_ids"]]

    def _loader(self, split: str, train: bool = False, keep_text: bool = False) -> DataLoader:
        dataset = self.splits[split]
        if not keep_text:
            dataset = dataset.remove_columns("text")
        pin = torch.cuda.is_available() if self.hparams.pin_memory is None else self.hparams.pin_memory
        kwargs: dict[str, Any] = dict(
            collate_fn=Collator(self.tokenizer),
            num_workers=self.hparams.num_workers,
            pin_memory=pin,
            persistent_workers=self.hparams.num_workers > 0,
        )
        batch_size = (
            self.hparams.batch_size if train else self.hparams.eval_batch_size or self.hparams.batch_size
        )
        if train and self.hparams.group_by_length:
            trainer = self.trainer
            sampler = DistributedLengthGroupedSampler(
                batch_size,
                lengths=self.lengths(split),
                num_replicas=trainer.world_size if trainer else 1,
                rank=trainer.global_rank if trainer else 0,
                seed=self.hparams.seed,
            )
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, generator=generator, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, keep_text=True)
