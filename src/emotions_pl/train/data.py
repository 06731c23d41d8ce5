"""The emotion data set as a LightningDataModule: load, validate, tokenize once, batch by length.

The rows never sit in Python lists: ``tables`` reads the files (or shards, or the hub) into
memory-mapped Arrow and one batched ``map`` validates and tokenizes them, so setup's memory does not
grow with the data; the tokenized split is cached under a key of the files' bytes, the tokenizer and
``max_length``.

Training batches come from a ``torchdata`` ``StatefulDataLoader`` over a sampler whose order is a
function of (seed, epoch): a checkpoint records how far the epoch got, and a resumed fit, mid-epoch or
between epochs, draws exactly the batches the uninterrupted one would (``patches.resume`` makes
Lightning 2.6 restore both; ``callbacks.RandomState`` the random generators)."""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import AutoTokenizer, DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import DistributedLengthGroupedSampler

from emotions_pl import sources, tables
from emotions_pl.files import fingerprint, publish_dir, sha256, staging_dir
from emotions_pl.patches import resume  # noqa: F401  (Lightning 2.6: a resumed epoch's batches)
from emotions_pl.schema import LABELS, SPLITS
from emotions_pl.tables import DataValidationError
from emotions_pl.train import distill


class Encoder:
    """Token ids of a batch of texts as Arrow lists, for ``map`` (picklable, for ``num_proc`` workers).

    The Rust tokenizer itself, truncating as ``tokenizer(texts, truncation=True, max_length=...)`` does
    (the same ids: ``tests/test_data.py``), without the per-text Python objects of that call; no padding,
    so the attention mask is all ones and the collator pads per batch."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int):
        self.backend = copy.deepcopy(tokenizer.backend_tokenizer)
        self.backend.no_padding()
        self.backend.enable_truncation(
            max_length, strategy="longest_first", direction=tokenizer.truncation_side
        )

    def __call__(self, texts: list[str]) -> dict[str, pa.Array]:
        ids = [e.ids for e in self.backend.encode_batch_fast(texts)]
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum(np.fromiter(map(len, ids), dtype=np.int32, count=len(ids)), out=offsets[1:])
        values = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(offsets[-1]))
        ones = np.ones(len(values), dtype=np.int64)
        return {
            "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
            "attention_mask": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ones)),
        }


TEACHER = "teacher_logits"  # the batch key of the teachers' log-probabilities (train batches only)


class Collator:
    """Pad per batch; carry raw texts through for prediction output, teacher rows for distillation."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None):
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        texts = [f["text"] for f in features] if "text" in features[0] else None
        teacher = np.stack([f[TEACHER] for f in features]) if TEACHER in features[0] else None
        batch = self.pad([{k: v for k, v in f.items() if k not in ("text", TEACHER)} for f in features])
        if texts is not None:
            batch["text"] = texts
        if teacher is not None:
            batch[TEACHER] = torch.from_numpy(teacher)
        return batch


class WithTeacher(Dataset):
    """A tokenized split whose row ``i`` also carries row ``i`` of the teacher logits: the rows follow
    whatever indices the sampler draws (length-grouped, per DDP rank)."""

    def __init__(self, dataset: datasets.Dataset, logits: np.ndarray):
        self.dataset, self.logits = dataset, logits

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], TEACHER: self.logits[index]}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # The batched fetch the DataLoader prefers, as the plain datasets.Dataset offers it.
        rows = self.dataset.__getitems__(indices)
        return [{**row, TEACHER: self.logits[i]} for row, i in zip(rows, indices, strict=True)]


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
        num_proc: processes that validate and tokenize a split (a ``datasets`` batched ``map``). 1 by
            default: the fast tokenizer already spreads a batch over the cores, and every extra process
            is a copy of the interpreter in memory; raise it on machines with many cores.
        teacher_logits: an ``.npz`` written by ``emotions_pl teacher`` for this train split (checked
            against it); each train batch then carries its rows' teacher log-probabilities for
            ``model.distill``. Validation and test batches carry none.
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
        teacher_logits: str | None = None,
        num_proc: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.label_names = list(label_names)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.splits: dict[str, datasets.Dataset] = {}
        self.cache_hits: dict[str, bool] = {}
        self.teacher: np.ndarray | None = None  # rows of teacher_logits, in the train split's order
        self._hub: datasets.DatasetDict | None = None  # prepare_data's download, for setup

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
        return Path(self.hparams.cache_dir or sources.cache_home()) / "tokenized"

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        name = self.hparams.tokenizer_name
        if not sources.is_local(name):
            sources.check_hub(name, "tokenizer", "point --model.model_name_or_path at a local model folder")
        return AutoTokenizer.from_pretrained(sources.resolve(name))

    def prepare_data(self) -> None:
        """Download once per node (hub sources); local folders need nothing. ``setup`` in the same
        process reuses what was loaded here instead of asking the hub a second time."""
        if not sources.is_local(self.source):
            self._hub = tables.hub_splits(self.source, self.label_names)
        self.tokenizer = self.load_tokenizer()

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self._setup_splits()
        if stage in (None, "fit") and self.hparams.teacher_logits and self.teacher is None:
            self.teacher = self._teacher_rows(self.hparams.teacher_logits)

    def _setup_splits(self) -> None:
        if self.tokenizer is None:
            self.tokenizer = self.load_tokenizer()
        tok_id = fingerprint(type(self.tokenizer).__name__, self.tokenizer.backend_tokenizer.to_str())
        encode_key = (tok_id, self.hparams.max_length)
        options: dict[str, Any] = dict(
            num_proc=self.hparams.num_proc,
            encode=Encoder(self.tokenizer, self.hparams.max_length),
            encode_key=encode_key,
        )
        folder = tables.local_folder(self.source)
        if folder is not None:
            files = {split: tables.split_files(folder, split) for split in SPLITS}
            # The digest's bytes, not its hex: the tokenized caches written so far keep their names.
            data_ids = {split: bytes.fromhex(sha256(*found, names=True)) for split, found in files.items()}

            def read(split: str) -> datasets.Dataset:
                return tables.read_files(
                    files[split], self.label_names, cache_dir=self.cache_root.parent / "datasets", **options
                )
        else:
            hub = self._hub or tables.hub_splits(self.source, self.label_names)
            data_ids = {split: hub[split]._fingerprint for split in SPLITS}

            def read(split: str) -> datasets.Dataset:
                return tables.read_hub_split(hub, self.source, split, self.label_names, **options)

        self._hub = None
        for split in SPLITS:
            key = fingerprint(data_ids[split], self.label_names, encode_key)
            self.splits[split] = self._tokenized(read, self.cache_root / f"{split}-{key}", split)

    def _teacher_rows(self, path: str) -> np.ndarray:
        """The teacher logits, checked against the train split loaded here (each DDP rank reads them
        in its own ``setup``); only ``fit`` needs them, so ``test`` runs without the file."""
        found = distill.load(path)
        train = self.splits["train"]
        found.check(path, train["text"], train["labels"], self.label_names)
        return found.logits

    def _tokenized(self, read: Callable[[str], datasets.Dataset], path: Path, split: str) -> datasets.Dataset:
        """Read, check and tokenize a split, or load it from the cache (a hit skips reading the rows);
        the cache is written by an atomic rename."""
        self.cache_hits[split] = path.exists()
        if path.exists():
            return datasets.load_from_disk(str(path))
        dataset = read(split).rename_column("label", "labels")
        tmp = staging_dir(path)
        with tables.quiet():
            dataset.save_to_disk(str(tmp))
        publish_dir(tmp, path, replace=False)  # another process may have finished the same entry first
        return datasets.load_from_disk(str(path))

    def lengths(self, split: str) -> np.ndarray:
        """Token counts, from the Arrow list offsets: no row is read into Python."""
        return pc.list_value_length(self.splits[split].data.column("input_ids")).to_numpy()

    def _loader(self, split: str, train: bool = False, keep_text: bool = False) -> DataLoader:
        dataset: Dataset = self.splits[split]
        if not keep_text:
            dataset = dataset.remove_columns("text")
        if train and self.teacher is not None:
            dataset = WithTeacher(dataset, self.teacher)
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
        if not train:
            return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)
        trainer, seed = self.trainer, self.hparams.seed
        shard = {
            "num_replicas": trainer.world_size if trainer else 1,
            "rank": trainer.global_rank if trainer else 0,
        }
        if self.hparams.group_by_length:
            sampler: Any = DistributedLengthGroupedSampler(
                batch_size, lengths=self.lengths(split), seed=seed, **shard
            )
        else:
            sampler = DistributedSampler(dataset, shuffle=True, seed=seed, **shard)
        # Both orders are functions of (seed, epoch): Lightning sets the epoch. The generator only seeds
        # the loader itself, so that starting an epoch draws nothing from torch's global generator (the
        # dropout masks of a resumed run then follow the uninterrupted run's).
        generator = torch.Generator().manual_seed(seed)
        return StatefulDataLoader(
            dataset, batch_size=batch_size, sampler=sampler, generator=generator, **kwargs
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, keep_text=True)
