"""Predict with an exported model folder: one interface over PyTorch (fp32), ONNX Runtime and int8 ONNX.

The server, the benchmarks and the robustness/drift reports all go through ``load_predictor`` so that
tokenization (truncation to the export's ``max_length``) and label order are defined once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INFO_FILE = "export_info.json"
# Variant name -> model file inside the export folder (fp32 is the safetensors checkpoint).
VARIANT_FILES = {"fp32": "model.safetensors", "onnx": "onnx/model.onnx", "int8": "onnx/model.int8.onnx"}
MODEL_INPUTS = ("input_ids", "attention_mask")
DEFAULT_CHUNK = 64


class ExportFolderError(ValueError):
    """The folder is not a usable export; the message names the folder and the missing piece."""


def read_info(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / INFO_FILE
    if not path.is_file():
        raise ExportFolderError(
            f"{model_dir}: no {INFO_FILE}; create the folder with `python -m emotions_pl export`."
        )
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class Encoded:
    """Texts tokenized in length-sorted chunks; ``order`` maps chunk rows back to input positions."""

    chunks: list[dict[str, Any]]
    order: np.ndarray


class Predictor:
    """A loaded export: ``predict`` / ``predict_proba`` for callers; ``encode`` + ``run`` for batches."""

    def __init__(self, model_dir: str | Path, variant: str = "fp32", num_threads: int | None = None):
        from transformers import AutoTokenizer

        self.model_dir = Path(model_dir)
        self.info = read_info(model_dir)
        if variant not in VARIANT_FILES:
            raise ExportFolderError(f"unknown variant {variant!r}; choose one of {sorted(VARIANT_FILES)}.")
        weights = self.model_dir / VARIANT_FILES[variant]
        if not weights.is_file():
            hint = "" if variant == "fp32" else f" (export with --{variant})"
            raise ExportFolderError(f"{model_dir}: variant {variant!r} needs {VARIANT_FILES[variant]}{hint}.")
        self.variant = variant
        self.labels: list[str] = list(self.info["labels"])
        self.max_length = int(self.info["max_length"])
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if variant == "fp32":
            import torch
            from transformers import AutoModelForSequenceClassification

            if num_threads:
                torch.set_num_threads(num_threads)
            self.model = AutoModelForSequenceClassification.from_pretrained(self.model_dir).eval()
            self.session = None
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if num_threads:
                options.intra_op_num_threads = num_threads
            self.session = ort.InferenceSession(str(weights), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str], chunk_size: int = DEFAULT_CHUNK) -> Encoded:
        """Sort by length so each chunk pads little; truncate to the export's max_length."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        tensors = "np" if self.session is not None else "pt"
        chunks = []
        for start in range(0, len(texts), chunk_size):
            batch = [texts[i] for i in order[start : start + chunk_size]]
            enc = self.tokenizer(
                batch, padding=True, truncation=True, max_length=self.max_length, return_tensors=tensors
            )
            chunks.append({name: enc[name] for name in MODEL_INPUTS})
        return Encoded(chunks, order)

    def run(self, encoded: Encoded) -> np.ndarray:
        """Logits ``[n, num_labels]`` in the original input order."""
        if self.session is not None:
            parts = [
                self.session.run(["logits"], {k: v.astype(np.int64) for k, v in c.items()})[0]
                for c in encoded.chunks
            ]
        else:
            import torch

            with torch.inference_mode():
                parts = [self.model(**chunk).logits.float().numpy() for chunk in encoded.chunks]
        logits = np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), dtype=np.float32)
        out = np.empty_like(logits)
        out[encoded.order] = logits
        return out

    def predict_logits(self, texts: list[str], batch_size: int = DEFAULT_CHUNK) -> np.ndarray:
        return self.run(self.encode(list(texts), batch_size))

    def predict_proba(self, texts: list[str], batch_size: int = DEFAULT_CHUNK) -> np.ndarray:
        return softmax(self.predict_logits(texts, batch_size))

    def results(self, probs: np.ndarray) -> list[dict[str, Any]]:
        """``{"label", "score", "scores"}`` per row of probabilities."""
        top = probs.argmax(-1)
        return [
            {
                "label": self.labels[k],
                "score": float(row[k]),
                "scores": {name: float(p) for name, p in zip(self.labels, row, strict=True)},
            }
            for k, row in zip(top.tolist(), probs, strict=True)
        ]

    def predict(self, texts: list[str], batch_size: int = DEFAULT_CHUNK) -> list[dict[str, Any]]:
        return self.results(self.predict_proba(texts, batch_size))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def load_predictor(model_dir: str, variant: str = "fp32", num_threads: int | None = None) -> Predictor:
    """Load an export folder for ``variant`` in ``fp32`` (PyTorch), ``onnx`` or ``int8`` (ONNX Runtime)."""
    return Predictor(model_dir, variant, num_threads)
