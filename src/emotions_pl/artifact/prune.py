"""``python -m emotions_pl prune``: keep K of a model's encoder layers, as a standard Hugging Face folder.

Layer pruning is the structured pruning that stays a standard model (transformers 5.23 has no
``prune_heads``; masks do not speed up dense CPU kernels): the folder loads with
``AutoModelForSequenceClassification`` and ``pipeline``, and ``fit --model.model_name_or_path DIR``
fine-tunes it. The embeddings, the kept layers (renumbered 0..K-1) and the classifier head are the
source's weights (a pretrained base model without a head stays one: ``fit`` adds the head).
``config.pruning`` records the source, its layer count, the kept indices and the strategy, and
``export`` copies it into ``export_info.json``.

It lives in ``artifact/`` because it reads a ``fit`` checkpoint through ``artifact/checkpoint.py``
(without Lightning) and, like ``export``, turns a finished model into a folder; ``train`` may not
import ``artifact``, and the folder reaches ``fit`` as a path, not an import.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from emotions_pl.commands import tool_parser
from emotions_pl.errors import UserError
from emotions_pl.files import publish_dir, staging_dir

# bottom: the K layers nearest the embeddings; top: the last K; alternate: K evenly spaced indices
# round_half_up(i * (N - 1) / (K - 1)), i = 0..K-1, which keeps the first and the last layer
# (6 -> 4: 0, 2, 3, 5; 6 -> 3: 0, 3, 5); for K = 1 it keeps the last.
STRATEGIES = ("bottom", "top", "alternate")
CONFIG_KEY = "pruning"


def kept_layers(num_layers: int, keep: int, strategy: str) -> list[int]:
    """The source indices of the layers ``strategy`` keeps, ascending."""
    if not 1 <= keep < num_layers:
        raise UserError(
            f"--keep-layers {keep}: the source has {num_layers} layers; keep between 1 and {num_layers - 1}."
        )
    if strategy == "bottom":
        return list(range(keep))
    if strategy == "top":
        return list(range(num_layers - keep, num_layers))
    if strategy == "alternate":
        if keep == 1:
            return [num_layers - 1]
        return [math.floor(i * (num_layers - 1) / (keep - 1) + 0.5) for i in range(keep)]
    raise UserError(f"--strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}.")


def layer_list(model: Any) -> str:
    """The dotted name of the encoder's layer list (``bert.encoder.layer``, ``distilbert.transformer.layer``):
    the one ``ModuleList`` whose length is the config's layer count."""
    import torch

    n = model.config.num_hidden_layers
    found = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and re.search(r"layers?$", name)
    ]
    if len(found) != 1:
        raise UserError(
            f"cannot tell which module holds the {n} encoder layers of this {model.config.model_type} "
            f"model (candidates: {found or 'none'}); layer pruning supports BERT-like encoders."
        )
    return found[0]


def prune_model(model: Any, keep: list[int], record: dict[str, Any]) -> Any:
    """A new model of the same class with only the layers ``keep`` (renumbered), loaded strictly."""
    import copy

    prefix = layer_list(model)
    block = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    new_index = {old: new for new, old in enumerate(keep)}
    weights = {}
    for key, value in model.state_dict().items():
        match = block.match(key)
        if match is None:
            weights[key] = value  # embeddings, pooler, head
        elif int(match.group(1)) in new_index:
            weights[f"{prefix}.{new_index[int(match.group(1))]}.{match.group(2)}"] = value
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(keep)  # DistilBERT maps it onto n_layers
    setattr(config, CONFIG_KEY, record)
    pruned = type(model)(config)
    pruned.load_state_dict(weights, strict=True)  # every kept tensor has its place, nothing is left over
    return pruned.eval()


def _load_source(ckpt: Path | None, model_dir: Path | None) -> tuple[Any, Any, str]:
    """The model and tokenizer to prune, and how to name the source."""
    if ckpt is not None:
        from emotions_pl.artifact import checkpoint

        fit = checkpoint.load(ckpt)
        fit.tokenizer.model_max_length = fit.max_length  # pipeline(..., truncation=True) cuts where fit did
        return fit.model, fit.tokenizer, str(ckpt.resolve())
    if model_dir is None or not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir}: no config.json; pass a Hugging Face model folder or an export.")
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # a base model's missing head is reported "newly initialized"
    try:
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            model_dir, output_loading_info=True
        )
    finally:
        hf_logging.set_verbosity_warning()
    if loading["missing_keys"]:  # a pretrained base model, no head: prune the encoder; `fit` adds the head
        model = AutoModel.from_pretrained(model_dir)
    return model.eval(), AutoTokenizer.from_pretrained(model_dir), str(model_dir.resolve())


def _check_output(output: Path) -> None:
    """Replace only a folder that ``prune`` wrote: never an export or a base model by a typo."""
    if not output.exists():
        return
    config = output / "config.json"
    try:
        ours = CONFIG_KEY in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise UserError(f"{output} exists and was not written by `prune`; choose another --output.")


def prune(
    output: Path, keep_layers: int, strategy: str, ckpt: Path | None = None, model_dir: Path | None = None
) -> dict[str, Any]:
    """Write the pruned folder at ``output``; return what ``config.pruning`` records."""
    if keep_layers < 1:  # before the model loads; the upper bound needs the source's layer count
        raise UserError(f"--keep-layers {keep_layers}: keep at least 1 layer.")
    _check_output(output)
    model, tokenizer, source = _load_source(ckpt, model_dir)
    n = model.config.num_hidden_layers
    keep = kept_layers(n, keep_layers, strategy)
    record = {
        "source": source,
        "source_layers": n,
        "kept_layers": keep,
        "strategy": strategy,
        "source_pruning": getattr(model.config, CONFIG_KEY, None),  # pruning a pruned model keeps its history
    }
    pruned = prune_model(model, keep, record)
    tmp = staging_dir(output)
    try:
        pruned.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        publish_dir(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("prune")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=Path, help="checkpoint written by `fit` (.ckpt)")
    source.add_argument("--model", type=Path, help="a Hugging Face classifier folder or an export folder")
    parser.add_argument("--keep-layers", type=int, required=True, help="encoder layers to keep (K)")
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="alternate",
        help="alternate: K evenly spaced layers, first and last included (default: before fine-tuning it "
        "kept the most accuracy, docs/results.md#layer-pruning); bottom: the first K; top: the last K",
    )
    parser.add_argument("--output", type=Path, required=True, help="the pruned Hugging Face folder")
    return parser


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    record = prune(args.output, args.keep_layers, args.strategy, ckpt=args.ckpt, model_dir=args.model)
    print(
        f"pruned {record['source']}: kept layers {record['kept_layers']} of {record['source_layers']} "
        f"({record['strategy']}) -> {args.output}"
    )
    return 0
