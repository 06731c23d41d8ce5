"""The emotion data set as a LightningDataModule: load, validate, tokenize once, batch by length."""

from __future__ import annotations

import hashlib
import os
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
from emotions_pl.files import publish_dir, staging_dir
from emotions_pl.schema import LABELS
from emotions_pl.tables import DataValidationError, load_splits

CACHE_ENV = "EMOTIONS_CACHE_DIR"


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
        self._prepared: dict[str, pd.DataFrame] | None = None  # prepare_data's download, for setup

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
        """Download once per node (hub sources); local folders need nothing. ``setup`` in the same
        process reuses what was loaded here instead of asking the hub a second time."""
        if not sources.is_local(self.source):
            self._prepared = load_splits(self.source, self.label_names)
        self.tokenizer = self.load_tokenizer()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.tokenizer is None:
            self.tokenizer = self.load_tokenizer()
        tables = self._prepared or load_splits(self.source, self.label_names)
        self._prepared = None
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
        tmp = staging_dir(path)
        dataset.save_to_disk(str(tmp))
        publish_dir(tmp, path, replace=False)  # another process may have finished the same entry first
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
