"""One predictor, whatever runs the model: an export folder (PyTorch fp32, ONNX Runtime, int8 ONNX) or a
model in memory (a checkpoint being evaluated or exported).

Texts are sorted by length and cut into chunks, so each chunk pads little; tokenization truncates to
the model's ``max_length``; the label order is the model's. Export parity, ``evaluate``,
``robustness``, ``drift`` and the server all predict through it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emotions_pl import schema
from emotions_pl.errors import UserError

INFO_FILE = "export_info.json"
# Variant name -> model file inside the export folder (fp32 is the safetensors checkpoint).
VARIANT_FILES = {"fp32": "model.safetensors", "onnx": "onnx/model.onnx", "int8": "onnx/model.int8.onnx"}
MODEL_INPUTS = ("input_ids", "attention_mask")
DEFAULT_CHUNK = 64


class ExportFolderError(UserError, ValueError):
    """The folder is not a usable export; the message names the folder and the missing piece."""


def read_info(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / INFO_FILE
    if not path.is_file():
        raise ExportFolderError(
            f"{model_dir}: no {INFO_FILE}; create the folder with `python -m emotions_pl export`."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportFolderError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}).") from e


@dataclass
class Encoded:
    """Texts tokenized in length-sorted chunks; ``order`` maps chunk rows back to input positions."""

    chunks: list[dict[str, Any]]
    order: np.ndarray


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


class Predictor:
    """``predict`` / ``predict_proba`` for callers; ``encode`` + ``run`` for batches (the server)."""

    def __init__(
        self,
        tokenizer: Any,
        labels: Sequence[str],
        max_length: int,
        forward: Callable[[dict[str, Any]], np.ndarray],
        tensors: str,
        variant: str,
        info: dict[str, Any] | None = None,
    ):
        self.tokenizer, self.labels, self.max_length = tokenizer, list(labels), int(max_length)
        self._forward, self._tensors = forward, tensors
        self.variant, self.info = variant, info or {}

    @classmethod
    def from_folder(
        cls,
        model_dir: str | Path,
        variant: str = "fp32",
        num_threads: int | None = None,
        spin_wait: bool = True,
    ) -> Predictor:
        """Load an export folder for ``variant``: ``fp32`` (PyTorch), ``onnx`` or ``int8`` (ONNX Runtime).

        ``spin_wait=False`` stops ONNX Runtime's intra-op threads from spinning between operators: on a
        machine whose cores are shared (the server's HTTP process, other programs) a spinning thread
        takes the CPU the others need (docs/serving.md, "Defaults")."""
        from transformers import AutoTokenizer

        model_dir = Path(model_dir)
        info = read_info(model_dir)
        if variant not in VARIANT_FILES:
            raise ExportFolderError(f"unknown variant {variant!r}; choose one of {sorted(VARIANT_FILES)}.")
        weights = model_dir / VARIANT_FILES[variant]
        if not weights.is_file():
            hint = "" if variant == "fp32" else f" (export with --{variant})"
            raise ExportFolderError(f"{model_dir}: variant {variant!r} needs {VARIANT_FILES[variant]}{hint}.")
        try:
            labels, max_length = list(info["labels"]), int(info["max_length"])
        except (KeyError, TypeError, ValueError) as e:
            raise ExportFolderError(
                f"{model_dir / INFO_FILE}: no usable 'labels' and 'max_length' ({e})."
            ) from e
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if variant == "fp32":
            import torch
            from transformers import AutoModelForSequenceClassification

            if num_threads:
                torch.set_num_threads(num_threads)
            model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
            return cls.from_model(model, tokenizer, labels, max_length, variant="fp32", info=info)
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        if not spin_wait:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(weights), options, providers=["CPUExecutionProvider"])

        def forward(chunk: dict[str, Any]) -> np.ndarray:
            return session.run(["logits"], {k: v.astype(np.int64) for k, v in chunk.items()})[0]

        return cls(tokenizer, labels, max_length, forward, "np", variant, info)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        labels: Sequence[str],
        max_length: int,
        device: str = "cpu",
        variant: str = "fp32",
        info: dict[str, Any] | None = None,
    ) -> Predictor:
        """A Hugging Face sequence classifier in memory (in eval mode)."""
        import torch

        def forward(chunk: dict[str, Any]) -> np.ndarray:
            with torch.inference_mode():
                inputs = {k: v.to(device) for k, v in chunk.items()}
                return model(**inputs).logits.float().cpu().numpy()

        return cls(tokenizer, labels, max_length, forward, "pt", variant, info)

    def encode(self, texts: Sequence[str], chunk_size: int = DEFAULT_CHUNK) -> Encoded:
        """Sort by length so each chunk pads little; truncate to ``max_length``."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        chunks = []
        for start in range(0, len(texts), chunk_size):
            batch = [texts[i] for i in order[start : start + chunk_size]]
            enc = self.tokenizer(
                batch, padding=True, truncation=True, max_length=self.max_length, return_tensors=self._tensors
            )
            chunks.append({name: enc[name] for name in MODEL_INPUTS})
        return Encoded(chunks, order)

    def run(self, encoded: Encoded) -> np.ndarray:
        """Logits ``[n, num_labels]`` in the original input order."""
        parts = [self._forward(chunk) for chunk in encoded.chunks]
        logits = np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), dtype=np.float32)
        out = np.empty_like(logits)
        out[encoded.order] = logits
        return out

    def predict_logits(self, texts: Sequence[str], batch_size: int = DEFAULT_CHUNK) -> np.ndarray:
        return self.run(self.encode(list(texts), batch_size))

    def predict_proba(self, texts: Sequence[str], batch_size: int = DEFAULT_CHUNK) -> np.ndarray:
        return softmax(self.predict_logits(texts, batch_size))

    def results(self, probs: np.ndarray) -> list[dict[str, Any]]:
        """The prediction record (``schema.prediction``) per row of probabilities."""
        return [schema.prediction(self.labels, row) for row in probs]

    def predict(self, texts: Sequence[str], batch_size: int = DEFAULT_CHUNK) -> list[dict[str, Any]]:
        return self.results(self.predict_proba(texts, batch_size))
