"""``teacher``: the teachers' logits on the train split, computed once and cached for student fits.

A teacher is a ``fit`` checkpoint, an export folder or a hub id; several make an ensemble. Each
predicts through the project's one ``Predictor``; the file (``train/distill.py``) holds the mean of
the teachers' log-probabilities. Averaging log-probabilities equals averaging logits up to a per-row
constant, so ``softmax(mean / T)`` is the same at every temperature T: the ensemble is the
normalised geometric mean of its members, and the student's temperature acts on it as on a single
teacher. (Averaging probabilities instead would leave T acting on ``log(mean p)``, no member's
scale.) The file goes to the cache, keyed by the teachers' identities and the data, unless
``--output`` names it; a second call with the same inputs is a cache hit.

The tool sits in ``artifact`` because it reads checkpoints and exports (``artifact.checkpoint``,
``artifact.predictor``); the file format is ``train``'s, which the data module reads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from emotions_pl import sources, tables
from emotions_pl.artifact import checkpoint
from emotions_pl.artifact.predictor import VARIANT_FILES, Predictor, read_info
from emotions_pl.commands import tool_parser
from emotions_pl.errors import UserError
from emotions_pl.files import sha256
from emotions_pl.schema import LABELS
from emotions_pl.train import distill

HUB_MAX_LENGTH = 128  # a hub model records no truncation length; the data module's default


def identify(source: str, hub_max_length: int) -> dict[str, Any]:
    """Who a teacher is, without running it: path + sha256 of its weights, or hub id + revision."""
    path = Path(sources.resolve(source))
    if path.is_file() or path.suffix == ".ckpt":
        if not path.is_file():
            raise checkpoint.CheckpointError(f"{path}: no such checkpoint file.")
        return {"kind": "checkpoint", "path": str(path), "sha256": sha256(path)}
    if path.is_dir():
        read_info(path)  # an export folder, or a one-line error naming what is missing
        return {"kind": "export", "path": str(path), "sha256": sha256(path / VARIANT_FILES["fp32"])}
    sources.check_hub(source, "teacher model", "pass a fit checkpoint or an export folder")
    from transformers import AutoConfig

    revision = getattr(AutoConfig.from_pretrained(source), "_commit_hash", None)
    return {"kind": "hub", "id": source, "revision": revision, "max_length": hub_max_length}


def same_teacher(identity: dict[str, Any]) -> dict[str, Any]:
    """What makes two teachers the same: their weights (or hub revision), not where the file lies."""
    return {k: v for k, v in identity.items() if k != "path"}


def predictor(identity: dict[str, Any], device: str) -> Predictor:
    """The teacher as a ``Predictor`` on ``device`` (every kind is an HF model in memory)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if identity["kind"] == "checkpoint":
        return checkpoint.load(Path(identity["path"]), device).predictor(device)
    if identity["kind"] == "export":
        folder = identity["path"]
        info = read_info(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        return Predictor.from_model(model, tokenizer, info["labels"], info["max_length"], device, info=info)
    model = AutoModelForSequenceClassification.from_pretrained(identity["id"], revision=identity["revision"])
    tokenizer = AutoTokenizer.from_pretrained(identity["id"], revision=identity["revision"])
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return Predictor.from_model(model.to(device).eval(), tokenizer, labels, identity["max_length"], device)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("teacher")
    parser.add_argument(
        "--teacher",
        action="append",
        required=True,
        metavar="SRC",
        help="a fit checkpoint, an export folder or a hub id; repeat for an ensemble (mean log-probs)",
    )
    parser.add_argument("--data", required=True, help="data folder or hub id; its train split is scored")
    parser.add_argument(
        "--output",
        type=Path,
        help="the .npz to write (default: the cache, $EMOTIONS_CACHE_DIR/teachers/<key>.npz)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    parser.add_argument("--device", default="cpu", help="torch device for the teachers (default cpu)")
    parser.add_argument(
        "--hub-max-length",
        type=int,
        default=HUB_MAX_LENGTH,
        help=f"truncation length of hub-id teachers, which record none (default {HUB_MAX_LENGTH})",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    train = tables.load_splits(args.data, LABELS)["train"]
    texts, labels = train["text"].tolist(), train["label"].tolist()
    data_sha = distill.data_fingerprint(texts, labels)
    identities = [identify(source, args.hub_max_length) for source in args.teacher]
    keyed = [same_teacher(identity) for identity in identities]
    output = args.output or distill.cache_path(distill.cache_key(keyed, data_sha, LABELS))
    if output.is_file():
        try:
            cached = distill.load(output)
        except distill.TeacherLogitsError:
            cached = None  # an unreadable file at --output is replaced
        hit = cached is not None and [same_teacher(t) for t in cached.teachers] == keyed
        if hit and cached.data_sha256 == data_sha and cached.labels == LABELS:
            print(f"cache hit: {output} ({len(cached.logits)} rows, {len(identities)} teacher(s))")
            return 0
    total, max_lengths = np.zeros((len(texts), len(LABELS))), []
    for source, identity in zip(args.teacher, identities, strict=True):
        start = time.perf_counter()
        teacher = predictor(identity, args.device)
        if teacher.labels != LABELS:
            raise UserError(
                f"{source}: the teacher's labels {teacher.labels} differ from the data's {LABELS}."
            )
        total += log_softmax(teacher.predict_logits(texts, args.batch_size))
        max_lengths.append(teacher.max_length)
        print(f"teacher {source}: {len(texts)} texts in {time.perf_counter() - start:.1f} s")
    logits = (total / len(identities)).astype(np.float32)
    distill.TeacherLogits(logits, identities, max_lengths, list(LABELS), data_sha).save(output)
    print(f"wrote {output} ({len(texts)} rows x {len(LABELS)} labels, {output.stat().st_size:,} bytes)")
    return 0
