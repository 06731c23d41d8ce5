"""The model card: the export folder's README.md in the Hugging Face style, from its export_info."""

from __future__ import annotations

from typing import Any

import yaml

from emotions_pl.artifact import scoring
from emotions_pl.schema import MAX_ACCURACY_LOSS_POINTS


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
        lines += [f"  - `{k}`: {scoring.fmt(v)}" for k, v in values.items() if k not in {"source"}]
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
    tested = {name: v["test"] for name, v in info["variants"].items() if v.get("test")}
    calibrated = info.get("calibration") or {}
    if tested:
        first = next(iter(tested.values()))
        lines += [
            "",
            "## Test split per variant",
            "",
            f"`{first['data']}` ({first['n']} texts, sha256 `{first['sha256'][:12]}`), scored by the "
            f"Predictor the server uses. `serve` defaults to the fastest variant within "
            f"{MAX_ACCURACY_LOSS_POINTS} points of fp32.",
            "",
            scoring.quality_markdown(tested).rstrip(),
            "",
            "## Calibration",
            "",
            scoring.calibration_markdown(
                calibrated, {n: t["calibration"] for n, t in tested.items()}
            ).rstrip(),
            "",
            "## Test split per slice",
            "",
            scoring.slices_markdown({n: t["slices"] for n, t in tested.items()}).rstrip(),
        ]
    else:
        lines += ["", "## Calibration", "", f"Calibrator: {scoring.describe(calibrated)}."]
    replaced = info.get("replaced")
    if replaced:
        previous = replaced["previous"]
        lines += [
            "",
            "## Replaces",
            "",
            f"This export replaced `{previous.get('name')}` (created {previous.get('created')}, source "
            f"checkpoint sha256 `{previous['source_checkpoint'].get('sha256')}`): {replaced['decision']}.",
        ]
    return "\n".join(lines) + "\n"
