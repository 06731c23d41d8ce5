"""Knowledge distillation's settings (the CLI's ``distill`` group) and its teacher-logits file: written
once by ``teacher`` (``artifact/teacher.py``), read by the data module of every student fit.

An ``.npz`` holding the teachers' log-probabilities on the train split (float32, one row per train
row in file order), who the teachers were, their ``max_length``, the label names and a sha256 of
the split's texts and labels. The data module refuses a file made from other data: a student must
never learn from soft labels aligned to the wrong rows. No Lightning here (the tool reads it too).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emotions_pl import sources
from emotions_pl.errors import UserError
from emotions_pl.files import atomic_write, fingerprint

FORMAT = 1
KEYS = ("format", "logits", "teachers", "max_length", "labels", "data_sha256")


@dataclass
class Distillation:
    """The CLI's ``distill`` group, one place for a student's recipe; the CLI links it to
    ``data.teacher_logits`` and ``model.distill``.

    Args:
        teacher_logits: an ``.npz`` from ``emotions_pl teacher`` for the train split; ``None``: no
            distillation (``temperature`` and ``alpha`` are then unused).
        temperature: softens both distributions in the KL term.
        alpha: weight of the KL term; ``1 - alpha`` weighs the cross-entropy.
    """

    teacher_logits: str | None = None
    temperature: float = 2.0
    alpha: float = 0.5


def model_setting(teacher_logits: str | None, temperature: float, alpha: float) -> dict[str, float] | None:
    """``model.distill`` from the ``distill`` group: plain fine-tuning without a teacher file."""
    return None if teacher_logits is None else {"temperature": temperature, "alpha": alpha}


class TeacherLogitsError(UserError):
    """The teacher-logits file is missing, unreadable or made for other data; the message names it."""


def data_fingerprint(texts: Sequence[str], labels: Sequence[int]) -> str:
    """sha256 of a split's texts and label indices, in order (a reordered split is other data)."""
    digest = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        digest.update(f"{int(label)}\t{text}\n".encode())
    return digest.hexdigest()


def cache_key(teachers: Sequence[dict[str, Any]], data_sha256: str, labels: Sequence[str]) -> str:
    """The cache entry's name: the teachers' identities, the data and the label names, as sorted JSON
    (the same identity whatever the order of a teacher's keys)."""
    blob = json.dumps(
        {"teachers": list(teachers), "data": data_sha256, "labels": list(labels)}, sort_keys=True
    )
    return fingerprint(blob.encode(), length=24)


def cache_path(key: str) -> Path:
    return sources.cache_home() / "teachers" / f"{key}.npz"


@dataclass
class TeacherLogits:
    logits: np.ndarray  # [rows, labels] float32: mean over teachers of log_softmax(logits)
    teachers: list[dict[str, Any]]  # identity of each teacher: kind, path + sha256 or hub id + revision
    max_length: list[int]  # each teacher's truncation length, in the order of ``teachers``
    labels: list[str]
    data_sha256: str

    def save(self, path: Path) -> None:
        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(
                    f,
                    format=np.int64(FORMAT),
                    logits=self.logits.astype(np.float32),
                    teachers=np.array(json.dumps(self.teachers)),
                    max_length=np.array(self.max_length, dtype=np.int64),
                    labels=np.array(self.labels),
                    data_sha256=np.array(self.data_sha256),
                )

        atomic_write(path, write)

    def check(
        self, path: Path | str, texts: Sequence[str], labels: Sequence[int], names: Sequence[str]
    ) -> None:
        """Raise unless this file was made for this train split and these label names."""
        if list(names) != self.labels:
            raise TeacherLogitsError(f"{path}: made for labels {self.labels}, the data has {list(names)}.")
        if self.logits.shape != (len(texts), len(names)):
            raise TeacherLogitsError(
                f"{path}: {self.logits.shape[0]} rows of teacher logits for a train split of {len(texts)} "
                "rows; it was made from other data (rerun `emotions_pl teacher` on this data)."
            )
        if data_fingerprint(texts, labels) != self.data_sha256:
            raise TeacherLogitsError(
                f"{path}: made from another train split (texts or labels differ, sha256 "
                f"{self.data_sha256[:12]}...); rerun `emotions_pl teacher` on this data."
            )


def load(path: Path | str) -> TeacherLogits:
    path = Path(path)
    if not path.is_file():
        raise TeacherLogitsError(
            f"{path}: no such teacher-logits file (write it with `emotions_pl teacher`)."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise TeacherLogitsError(f"{path}: not a teacher-logits file (no {', '.join(missing)}).")
            if int(npz["format"]) != FORMAT:
                raise TeacherLogitsError(f"{path}: format {int(npz['format'])}, this version reads {FORMAT}.")
            return TeacherLogits(
                logits=npz["logits"].astype(np.float32),
                teachers=json.loads(str(npz["teachers"])),
                max_length=[int(n) for n in npz["max_length"]],
                labels=[str(name) for name in npz["labels"]],
                data_sha256=str(npz["data_sha256"]),
            )
    except (OSError, ValueError, zipfile.BadZipFile) as e:  # not a zip, a truncated file, a pickled array
        raise TeacherLogitsError(f"{path}: not a readable .npz file ({type(e).__name__}: {e}).") from e
