"""``python -m emotions_pl export``: checkpoint -> Hugging Face folder (+ ONNX / int8), parity-checked.

The folder is built next to its destination and renamed into place only after every variant has
passed its parity check against the checkpoint, so a server never loads half an artifact.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from emotions_pl import sources
from emotions_pl.inference import INFO_FILE, MODEL_INPUTS, VARIANT_FILES, Predictor

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


class ExportError(RuntimeError):
    """An export that must not be published (failed parity, bad checkpoint); nothing is left behind."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _same_file(a: str | None, b: Path) -> bool:
    try:
        return a is not None and Path(a).exists() and os.path.samefile(a, b)
    except OSError:
        return False


def log_versions(run_dir: Path | None) -> list[Path]:
    """``<run>/logs/version_N`` folders, oldest first."""
    found = run_dir.glob("logs/version_*") if run_dir else []
    return sorted(
        (p for p in found if p.name.split("_")[-1].isdigit()), key=lambda p: int(p.name.split("_")[-1])
    )


def checkpoint_metrics(ckpt: dict[str, Any], ckpt_path: Path, run_dir: Path | None) -> dict[str, Any]:
    """Val metrics of the checkpoint's epoch and test metrics of runs that tested this file, from CSV logs.

    Falls back to the monitored score in the ModelCheckpoint state when no logs are found.
    """
    metrics: dict[str, Any] = {}
    for version in log_versions(run_dir):
        csv_path = version / "metrics.csv"
        if not csv_path.is_file():
            continue
        rows = _read_csv(csv_path)
        val_rows = [
            r
            for r in rows
            if r.get("epoch")
            and int(float(r["epoch"])) == ckpt.get("epoch")
            and _number(r.get("step") or "") is not None
            and float(r["step"]) < ckpt.get("global_step", 0)
            and any(k.startswith("val/") and r[k] for k in r)
        ]
        if val_rows:
            metrics["validation"] = {
                k: float(v) for k, v in val_rows[-1].items() if k.startswith("val/") and v
            } | {"epoch": ckpt.get("epoch"), "source": str(csv_path)}
        config_path = version / "config.yaml"
        tested = config_path.is_file() and _same_file(
            (yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}).get("ckpt_path"), ckpt_path
        )
        test_rows = [r for r in rows if any(k.startswith("test/") and r[k] for k in r)]
        if tested and test_rows:
            merged = {k: float(v) for r in test_rows for k, v in r.items() if k.startswith("test/") and v}
            metrics["test"] = merged | {"source": str(csv_path)}
    if "validation" not in metrics:
        for key, state in (ckpt.get("callbacks") or {}).items():
            if key.startswith("ModelCheckpoint") and state.get("current_score") is not None:
                score = state["current_score"]
                metrics["validation"] = {
                    state["monitor"]: float(score),
                    "source": "checkpoint callback state",
                }
    return metrics


def training_config(run_dir: Path | None) -> dict[str, Any]:
    """The resolved trainer section of the newest fit config in the run's logs, for the model card."""
    for version in reversed(log_versions(run_dir)):
        path = version / "config.yaml"
        if not path.is_file():
            continue
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not config.get("ckpt_path"):
            trainer = config.get("trainer") or {}
            keep = (
                "max_epochs",
                "max_steps",
                "precision",
                "accumulate_grad_batches",
                "gradient_clip_val",
                "limit_train_batches",
                "val_check_interval",
            )
            return {
                "trainer": {k: trainer.get(k) for k in keep},
                "seed_everything": config.get("seed_everything"),
                "source": str(path),
            }
    return {}


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


def reference_logits(model: torch.nn.Module, tokenizer: Any, max_length: int) -> dict[str, np.ndarray]:
    """The checkpoint's logits on the parity texts, batched (padded) and one text at a time."""
    out = {}
    with torch.inference_mode():
        for mode, size in (("batched", len(PARITY_TEXTS)), ("single", 1)):
            parts = []
            for start in range(0, len(PARITY_TEXTS), size):
                enc = tokenizer(
                    PARITY_TEXTS[start : start + size],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                parts.append(model(**{k: enc[k] for k in MODEL_INPUTS}).logits.float().numpy())
            out[mode] = np.concatenate(parts)
    return out


def check_parity(
    folder: Path, variant: str, reference: dict[str, np.ndarray], max_diff: float, min_agreement: float
) -> dict[str, Any]:
    """Reload the variant from the folder being written and compare it with the checkpoint."""
    predictor = Predictor(folder, variant)
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


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(
    info: dict[str, Any], hparams: dict[str, Any], data: dict[str, Any], train: dict[str, Any]
) -> str:
    """README.md in the Hugging Face style: front matter, what it is, how it was trained, how well it does."""
    labels = ", ".join(info["labels"])
    origin = (
        f"Trained from a random initialisation (tokenizer of `{info['base_model']}`)"
        if hparams.get("random_init_config")
        else f"Fine-tuned from `{info['base_model']}`"
    )
    lines = [
        "---",
        "language: en",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [emotion, text-classification, emotions_pl]",
        "---",
        "",
        f"# {info['name']}",
        "",
        f"Classifies the emotion of a short English text into one of: {labels}.",
        f"{origin} ({info['architecture']}) with emotions_pl (PyTorch Lightning).",
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import pipeline",
        f'clf = pipeline("text-classification", model="{info["name"]}", top_k=None)',
        'clf("i feel wonderful today", truncation=True)  # truncation: texts over max_length tokens',
        "```",
        "",
        f"Serve it: `python -m emotions_pl serve --model {info['name']}` (docs/serving.md).",
        "",
        "## Data",
        "",
        f"- source: `{data.get('source') or '$EMOTIONS_DATA_DIR (a local train/validation/test folder)'}`",
        f"- labels (index order): {labels}",
        f"- max_length: {info['max_length']} tokens (longer texts are truncated)",
        "",
        "## Training config",
        "",
        "```yaml",
        yaml.safe_dump({"model": hparams, "data": data, **train}, sort_keys=False).rstrip(),
        "```",
        "",
        "## Metrics (this checkpoint)",
        "",
    ]
    metrics = info.get("metrics") or {}
    if not metrics:
        lines.append("No validation or test metrics were found for this checkpoint.")
    for split, values in metrics.items():
        lines.append(f"- {split} ({values.get('source', '')}):")
        lines += [f"  - `{k}`: {_fmt(v)}" for k, v in values.items() if k not in {"source"}]
    lines += [
        "",
        "## Export and parity",
        "",
        f"Source checkpoint sha256: `{info['source_checkpoint']['sha256']}`.",
        "",
    ]
    lines += ["| variant | file | max abs logit diff | label agreement |", "|---|---|---|---|"]
    for name, variant in info["variants"].items():
        p = variant["parity"]
        lines.append(
            f"| {name} | `{variant['path']}` | {p['max_abs_logit_diff']:.2e} | {p['label_agreement']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def publish(tmp: Path, output: Path) -> None:
    """Swap the finished folder into place; an existing one is removed only after the new one is there.

    Ctrl+C / SIGTERM are held back during the two renames, so they cannot leave ``output`` missing.
    A stop asked for earlier whose KeyboardInterrupt was swallowed (raised inside a ``__del__``,
    where Python only prints it) is honoured here, before anything is renamed.
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        if _stop_requested.is_set():
            raise KeyboardInterrupt("stop requested before publishing")
        old = None
        if output.exists():
            old = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.old-"))
            os.rename(output, old / output.name)
        try:
            os.rename(tmp, output)
        except OSError:
            if old is not None:
                os.rename(old / output.name, output)
            raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export(
    ckpt_path: Path,
    output: Path,
    onnx: bool = False,
    int8: bool = False,
    run_dir: Path | None = None,
    max_diff: float = MAX_LOGIT_DIFF,
    min_int8_agreement: float = MIN_INT8_AGREEMENT,
) -> dict[str, Any]:
    """Write the export folder for ``ckpt_path`` at ``output`` and return its export_info."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from emotions_pl.model import EmotionClassifier

    if not ckpt_path.is_file():
        raise ExportError(f"{ckpt_path}: checkpoint not found.")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ExportError(f"{ckpt_path}: not a checkpoint that loads with weights_only=True ({e}).") from e
    data = dict(ckpt.get("datamodule_hyper_parameters") or {})
    if "tokenizer_name" not in data:
        raise ExportError(
            f"{ckpt_path}: no datamodule hyper-parameters (tokenizer_name, max_length) in the checkpoint."
        )
    hparams = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    max_length = int(data.get("max_length", 128))
    hf_logging.set_verbosity_error()  # rebuilding the backbone reports the classifier "missing" until loaded
    module = EmotionClassifier.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    hf_logging.set_verbosity_warning()
    model = module.model.eval()
    labels = list(module.label_names)
    tokenizer = AutoTokenizer.from_pretrained(sources.resolve(data["tokenizer_name"]))
    tokenizer.model_max_length = max_length  # pipeline(..., truncation=True) then cuts where training did
    reference = reference_logits(model, tokenizer, max_length)
    run_dir = run_dir or (ckpt_path.parent.parent if (ckpt_path.parent.parent / "logs").is_dir() else None)

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the published folder is an ordinary one
    try:
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {name: i for i, name in enumerate(labels)}
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info: dict[str, Any] = {
            "name": output.name,
            "base_model": hparams.get("model_name_or_path"),
            "architecture": model.config.model_type,
            "labels": labels,
            "max_length": max_length,
            "source_checkpoint": {
                "path": str(ckpt_path.resolve()),
                "sha256": sha256(ckpt_path),
                "epoch": ckpt.get("epoch"),
                "global_step": ckpt.get("global_step"),
            },
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "metrics": checkpoint_metrics(ckpt, ckpt_path, run_dir),
            "variants": {},
        }
        (tmp / INFO_FILE).write_text(
            json.dumps(info, indent=2), encoding="utf-8"
        )  # Predictor reads it for parity
        wanted = ["fp32"] + (["onnx"] if onnx or int8 else []) + (["int8"] if int8 else [])
        for variant in wanted:
            if variant == "onnx":
                export_onnx(model, tokenizer, max_length, tmp / VARIANT_FILES["onnx"])
            if variant == "int8":
                export_int8(tmp / VARIANT_FILES["onnx"], tmp / VARIANT_FILES["int8"])
            parity = check_parity(tmp, variant, reference, max_diff, min_int8_agreement)
            info["variants"][variant] = {"path": VARIANT_FILES[variant], "parity": parity}
        (tmp / "README.md").write_text(
            model_card(info, hparams, data, training_config(run_dir)), encoding="utf-8"
        )
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        for path in tmp.rglob("*"):
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        publish(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


_stop_requested = threading.Event()


def _stop_on_signal(signum: int, frame: Any) -> None:
    _stop_requested.set()  # remembered: the exception below is lost if it lands inside a __del__
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m emotions_pl export",
        description="Export a Lightning checkpoint to a Hugging Face folder (+ ONNX / int8), parity-checked.",
    )
    parser.add_argument("--ckpt", type=Path, required=True, help="Lightning checkpoint (.ckpt)")
    parser.add_argument("--output", type=Path, required=True, help="export folder (replaced atomically)")
    parser.add_argument("--onnx", action="store_true", help="also write onnx/model.onnx (ONNX Runtime)")
    parser.add_argument(
        "--int8", action="store_true", help="also write onnx/model.int8.onnx (implies --onnx)"
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        help="run folder with logs/version_*/metrics.csv (default: the checkpoint's <run>/checkpoints/..)",
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
    args = parser.parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):  # clean up the temporary folder on either
        signal.signal(signum, _stop_on_signal)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        info = export(
            args.ckpt,
            args.output,
            args.onnx,
            args.int8,
            args.run_dir,
            args.max_logit_diff,
            args.min_int8_agreement,
        )
    except ExportError as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("export interrupted; its temporary folder was removed", file=sys.stderr)
        return 130
    print(f"exported {args.ckpt} -> {args.output} ({', '.join(info['variants'])})")
    return 0
