"""``python -m emotions_pl export``: checkpoint -> Hugging Face folder (+ ONNX / int8), parity-checked.

The folder is built next to its destination and renamed into place only after every variant has
passed its parity check against the checkpoint, so a server never loads half an artifact. With
``--data DIR`` a temperature is fitted on the validation split and folded into the classifier head
before anything is written (``calibration.py``: every variant's scores are calibrated), and every
variant is scored on the test split (accuracy, macro-F1: what ``serve`` reads to choose its default
variant; calibration before and after; slices). The promotion gate refuses to replace a folder that
holds a better model (by recorded test metrics) unless ``--force``; what was replaced, and why, is
recorded.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import signal
import sys
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emotions_pl.artifact import calibration, card, checkpoint, promotion, scoring
from emotions_pl.artifact.predictor import INFO_FILE, MODEL_INPUTS, VARIANT_FILES, Predictor
from emotions_pl.commands import tool_parser
from emotions_pl.errors import CheckFailed
from emotions_pl.files import atomic_write_text, publish_dir, sha256, staging_dir

# Tolerances (documented in docs/serving.md): fp32 and ONNX must match the checkpoint's logits closely
# and agree on every label; int8 changes the weights, so only the labels are held to a floor.
MAX_LOGIT_DIFF = 1e-3
MIN_INT8_AGREEMENT = 0.9
ONNX_OPSET = 17

# Fixed texts for parity checks: every emotion, short and long (truncated), odd spacing and symbols.
PARITY_TEXTS = [
    "i feel so alone and hopeless tonight",
    "i am thrilled that we finally won the game",
    "i feel loved when she holds my hand",
    "i am furious about how they treated us",
    "i feel nervous about the exam tomorrow",
    "i was amazed to see snow in july",
    "ok",
    "i feel like crying but i also want to laugh, what a strange day",
    "I'm SO happy!!! 🎉🎉",
    "i feel a little bitter about the whole thing honestly",
    "im scared of the dark and the noises outside my window",
    "what a shock, i never expected that ending",
    "i feel cherished and supported by my friends",
    "nothing matters anymore and i feel numb",
    "this is fine   \t  i guess",
    "i feel content and peaceful sitting by the lake this morning",
    "grr i am so annoyed with this traffic",
    "i feel curious and surprised by the results",
    " ".join(["i feel overwhelmed by everything happening around me"] * 20),  # longer than max_length
    "café naïve résumé — i feel nostalgic",
]


class ExportError(CheckFailed):
    """An export that must not be published (failed parity); nothing is left behind."""


class _Wrapped(torch.nn.Module):
    """Named tensor inputs -> logits, the signature the ONNX graph and the server use."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model: torch.nn.Module, tokenizer: Any, max_length: int, path: Path) -> None:
    """TorchScript ``torch.onnx.export`` (offline, no onnxscript needed), dynamic batch and sequence axes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = tokenizer(
        PARITY_TEXTS[:2], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "logits": {0: "batch"},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings; parity is checked right after
        torch.onnx.export(
            _Wrapped(copy.deepcopy(model)).eval(),
            tuple(sample[name] for name in MODEL_INPUTS),
            str(path),
            dynamo=False,
            input_names=list(MODEL_INPUTS),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
        )


def export_int8(onnx_path: Path, path: Path) -> None:
    """Dynamic int8 quantization of the ONNX graph's MatMul/Gemm weights (ONNX Runtime)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process did not make this model faster (docs/serving.md)
    try:
        quantize_dynamic(onnx_path, path, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def reference_logits(predictor: Predictor) -> dict[str, np.ndarray]:
    """The checkpoint's logits on the parity texts, batched (padded) and one text at a time."""
    return {
        "batched": predictor.predict_logits(PARITY_TEXTS, batch_size=len(PARITY_TEXTS)),
        "single": predictor.predict_logits(PARITY_TEXTS, batch_size=1),
    }


def check_parity(
    folder: Path, variant: str, reference: dict[str, np.ndarray], max_diff: float, min_agreement: float
) -> dict[str, Any]:
    """Reload the variant from the folder being written and compare it with the checkpoint."""
    predictor = Predictor.from_folder(folder, variant)
    diffs, agreements = [], []
    for mode, ref in reference.items():
        got = predictor.predict_logits(PARITY_TEXTS, batch_size=len(PARITY_TEXTS) if mode == "batched" else 1)
        diffs.append(float(np.abs(got - ref).max()))
        agreements.append(float((got.argmax(-1) == ref.argmax(-1)).mean()))
    result = {
        "texts": len(PARITY_TEXTS),
        "max_abs_logit_diff": max(diffs),
        "label_agreement": min(agreements),
        "tolerance": {"max_abs_logit_diff": max_diff}
        if variant != "int8"
        else {"min_label_agreement": min_agreement},
    }
    ok = (
        result["label_agreement"] >= min_agreement
        if variant == "int8"
        else (result["max_abs_logit_diff"] <= max_diff and result["label_agreement"] == 1.0)
    )
    print(
        f"parity {variant:>5}: max |logit diff| {result['max_abs_logit_diff']:.2e}, "
        f"label agreement {result['label_agreement']:.3f} on {len(PARITY_TEXTS)} texts -> "
        f"{'ok' if ok else 'FAILED'}"
    )
    if not ok:
        raise ExportError(f"{variant} export failed its parity check against the checkpoint: {result}")
    return result


def calibrate(fit: checkpoint.FitCheckpoint, data: Path | None) -> dict[str, Any]:
    """Fit a calibrator on the validation split of the ``data`` folder with the checkpoint's fp32 logits
    (temperature or vector scaling, chosen by cross-validated NLL: ``calibration.choose``) and fold it
    into ``fit.model``; the record for export_info. Without a data folder nothing is folded. Raises
    ``ExportError`` if the folded model's logits are not the calibrator's map of the old ones (or, for
    temperature, if a label moved)."""
    from emotions_pl import tables

    if data is None or not data.is_dir():
        why = (
            "no --data" if data is None else f"--data {data} is a file, not a folder with a validation split"
        )
        print(f"calibration: {why}; nothing folded")
        return {
            **calibration.Affine.identity(len(fit.labels)).record(),
            "fitted_on": None,
            "folded": False,
            "note": f"{why}: scores are raw",
        }
    path = tables.find_split_file(data, "validation")
    texts, targets = tables.read_split(path, fit.labels, "validation")
    logits = fit.predictor().predict_logits(texts)
    affine, choice = calibration.choose(logits, targets)
    before = fit.predictor().predict_logits(PARITY_TEXTS)
    module = calibration.fold(fit.model, affine, len(fit.labels))
    after = fit.predictor().predict_logits(PARITY_TEXTS)
    diff = float(np.abs(after - affine.apply(before)).max())
    moved = affine.keeps_argmax and not (after.argmax(-1) == before.argmax(-1)).all()
    if diff > MAX_LOGIT_DIFF or moved:
        raise ExportError(f"folding {affine.method} scaling into {module} changed the logits (max {diff})")
    record = {
        **affine.record(),
        "fitted_on": "validation",
        "folded": True,
        "folded_into": f"{module}.weight, {module}.bias",
        "choice": choice,
        "data": str(path.resolve()),
        "sha256": sha256(path),
        "n": len(texts),
        "nll_before": calibration.nll(logits, targets),
        "nll_after": calibration.nll(affine.apply(logits), targets),
        # temperature cannot reorder the logits; vector scaling may move a label, and so accuracy
        "argmax_unchanged": affine.keeps_argmax,
    }
    print(
        f"calibration: {affine.method} scaling on {len(texts)} validation texts ({choice['why']}), NLL "
        f"{record['nll_before']:.4f} -> {record['nll_after']:.4f}; folded into {module}"
    )
    return record


def score_variants(
    folder: Path, variants: list[str], data: Path, labels: list[str], affine: calibration.Affine
) -> dict[str, Any]:
    """Each variant on the test split, through the Predictor the server uses: accuracy, macro-F1 and
    per-class F1 with 95 % intervals, calibration as exported (``after``) and with the calibrator undone
    (``before``), and the slices (``scoring.variant``)."""
    from emotions_pl import tables

    path = tables.find_split_file(data, "test") if data.is_dir() else data
    texts, targets = tables.read_split(path, labels, "test")
    digest = sha256(path)
    scored = {}
    for variant in variants:
        start = time.perf_counter()
        logits = Predictor.from_folder(folder, variant).predict_logits(texts)
        seconds = time.perf_counter() - start
        scored[variant] = {
            "data": str(path.resolve()),
            "sha256": digest,
            "n": len(texts),
            "texts_per_s": round(len(texts) / seconds, 1),  # this machine, at export time: for the record
            **scoring.variant(logits, texts, targets, labels, affine),
        }
        s = scored[variant]
        acc = s["intervals"]["acc"]
        print(
            f"test  {variant:>5}: accuracy {s['accuracy']:.4f} [{acc['ci_low']:.4f}, {acc['ci_high']:.4f}], "
            f"macro-F1 {s['f1_macro']:.4f}, ECE {s['calibration']['after']['ece']:.4f} on {len(texts)} "
            f"texts of {path}"
        )
    return scored


def export(
    ckpt_path: Path,
    output: Path,
    onnx: bool = False,
    int8: bool = False,
    max_diff: float = MAX_LOGIT_DIFF,
    min_int8_agreement: float = MIN_INT8_AGREEMENT,
    data: Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the export folder for ``ckpt_path`` at ``output`` and return its export_info.

    ``data``: a data folder (its test split) or a test file to score every variant on. ``force``:
    replace the folder's model even when it is better (the promotion gate).
    """
    fit = checkpoint.load(ckpt_path)
    model, tokenizer, labels = fit.model, fit.tokenizer, fit.labels
    if data is None:  # the gate's answer is known now: refuse before the work, not after
        candidate = {"source_checkpoint": {"sha256": sha256(ckpt_path)}, "metrics": fit.metrics()}
        promotion.promotion(output, candidate, force)
    tokenizer.model_max_length = fit.max_length  # pipeline(..., truncation=True) then cuts where training did
    calibrated = calibrate(fit, data)  # before anything is written: every variant carries it
    reference = reference_logits(fit.predictor())

    tmp = staging_dir(output)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info: dict[str, Any] = {
            "name": output.name,
            "base_model": fit.hparams.get("model_name_or_path"),
            "architecture": model.config.model_type,
            "labels": labels,
            "max_length": fit.max_length,
            "source_checkpoint": {
                "path": str(ckpt_path.resolve()),
                "sha256": sha256(ckpt_path),
                "epoch": fit.epoch,
                "global_step": fit.global_step,
            },
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "metrics": fit.metrics(),
            "calibration": calibrated,
            "variants": {},
        }
        if getattr(model.config, "pruning", None):  # fine-tuned from a `prune` folder: what was cut
            info["pruning"] = model.config.pruning
        atomic_write_text(tmp / INFO_FILE, json.dumps(info, indent=2))  # Predictor reads it for parity
        wanted = ["fp32"] + (["onnx"] if onnx or int8 else []) + (["int8"] if int8 else [])
        for variant in wanted:
            if variant == "onnx":
                export_onnx(model, tokenizer, fit.max_length, tmp / VARIANT_FILES["onnx"])
            if variant == "int8":
                export_int8(tmp / VARIANT_FILES["onnx"], tmp / VARIANT_FILES["int8"])
            parity = check_parity(tmp, variant, reference, max_diff, min_int8_agreement)
            info["variants"][variant] = {"path": VARIANT_FILES[variant], "parity": parity}
        if data is not None:
            affine = calibration.Affine.from_record(calibrated, len(labels))
            for variant, scored in score_variants(tmp, wanted, data, labels, affine).items():
                info["variants"][variant]["test"] = scored
        replaced = promotion.promotion(output, info, force)
        if replaced is not None:
            info["replaced"] = replaced
            print(f"replacing {output}: {replaced['decision']}")
        training = {"trainer": fit.run.get("trainer", {}), "seed_everything": fit.data.get("seed")}
        atomic_write_text(tmp / "README.md", card.model_card(info, fit.hparams, fit.data, training))
        atomic_write_text(tmp / INFO_FILE, json.dumps(info, indent=2))
        publish_dir(tmp, output, stop_requested=_stop_requested)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


_stop_requested = threading.Event()


def _stop_on_signal(signum: int, frame: Any) -> None:
    _stop_requested.set()  # remembered: the exception below is lost if it lands inside a __del__
    raise KeyboardInterrupt(f"signal {signum}")


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("export")
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by `fit` (.ckpt)")
    parser.add_argument("--output", type=Path, required=True, help="export folder (replaced atomically)")
    parser.add_argument("--onnx", action="store_true", help="also write onnx/model.onnx (ONNX Runtime)")
    parser.add_argument(
        "--int8", action="store_true", help="also write onnx/model.int8.onnx (implies --onnx)"
    )
    parser.add_argument(
        "--max-logit-diff",
        type=float,
        default=MAX_LOGIT_DIFF,
        help="fp32/onnx parity tolerance on logits (default %(default)g)",
    )
    parser.add_argument(
        "--min-int8-agreement",
        type=float,
        default=MIN_INT8_AGREEMENT,
        help="int8 parity floor on label agreement (default %(default)g)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="score every variant on this data folder's test split (or this test file): accuracy and "
        "macro-F1 per variant in export_info.json, which `serve` uses to choose its default variant",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace the model in --output even when its recorded test metrics are better",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    # Clean up the temporary folder on either signal; the caller's handlers come back after (the tests
    # run export in their own process).
    previous = {signum: signal.signal(signum, _stop_on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        info = export(
            args.ckpt,
            args.output,
            args.onnx,
            args.int8,
            args.max_logit_diff,
            args.min_int8_agreement,
            data=args.data,
            force=args.force,
        )
    except KeyboardInterrupt:
        print("export interrupted; its temporary folder was removed", file=sys.stderr)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(f"exported {args.ckpt} -> {args.output} ({', '.join(info['variants'])})")
    return 0
