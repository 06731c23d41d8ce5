"""``python -m emotions_pl explain``: which words of a text drove a label, as word-level attributions.

The attributions are Captum's Layer Integrated Gradients on the fp32 model's word embeddings: the path
runs from a reference input -- every word piece replaced by [PAD], [CLS] and [SEP] kept, the same
attention mask -- to the text, ``steps`` points (Gauss-Legendre, Captum's default rule). The attributed
quantity is the explained label's logit, so a text's attributions sum to its logit minus the
reference's (``convergence_delta`` is how far off that sum is: the integration error). Not the
probability: the softmax saturates along the path, and on the exported MiniLM 32 steps left a median
error of 41 % of the probability change against 4 % of the logit change (docs/serving.md).

The label explained is the one the chosen variant predicts for the text alone (for ``onnx`` / ``int8``
that variant's label and scores, the attributions still from fp32: gradients need PyTorch) or one the
caller names.

Word pieces are merged into the words of the input -- runs of non-whitespace characters, punctuation
and emoji included (``happy!!`` is one word) -- with character offsets from the fast tokenizer, in
Unicode code points, so ``text[start:end] == word`` and the words with the text between them rebuild the
text exactly. A word gets the sum of its pieces' attributions, and ``null`` when the model never saw it:
it lies past ``max_length`` tokens (``truncated`` is then true), or the tokenizer's normaliser dropped
all its characters (control and zero-width characters). An emoji is [UNK] to MiniLM's vocabulary: alone
(``😊,``) it is one [UNK] piece, attached to letters (``great😊``) the whole pre-token is one [UNK]; the
word holding it gets that piece's attribution either way.
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emotions_pl import schema
from emotions_pl.artifact.predictor import VARIANT_FILES, ExportFolderError, Predictor, read_info
from emotions_pl.errors import UserError

# Gauss-Legendre with 32 points: on the exported MiniLM the median integration error is 4 % of the logit
# change (34 % with 16 points); the cost per explanation is in docs/serving.md.
DEFAULT_STEPS = 32
MAX_STEPS = 512
_WORD = re.compile(r"\S+")


def merge_words(
    text: str, offsets: Sequence[tuple[int, int]], special: Sequence[int], scores: Sequence[float]
) -> list[dict[str, Any]]:
    """The words of ``text`` (non-whitespace runs) with the summed scores of the pieces inside them.

    ``offsets``, ``special`` and ``scores`` are per token (``return_offsets_mapping``,
    ``return_special_tokens_mask``); a word no piece falls in gets ``None``."""
    spans = [m.span() for m in _WORD.finditer(text)]
    starts = [a for a, _ in spans]
    totals: list[float | None] = [None] * len(spans)
    for (a, b), is_special, score in zip(offsets, special, scores, strict=True):
        if is_special or b <= a:
            continue
        i = bisect.bisect_right(starts, a) - 1
        if i < 0 or spans[i][1] <= a:  # the piece starts in white space (never for BERT): the next word
            i += 1
            if i >= len(spans) or spans[i][0] >= b:
                continue
        totals[i] = (totals[i] or 0.0) + float(score)
    return [
        {"word": text[a:b], "start": a, "end": b, "attribution": total}
        for (a, b), total in zip(spans, totals, strict=True)
    ]


class Explainer:
    """Explanations over an export folder: the chosen variant predicts, the fp32 model attributes."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        labels: Sequence[str],
        max_length: int,
        predictor: Predictor,
        steps: int = DEFAULT_STEPS,
    ):
        from captum.attr import LayerIntegratedGradients

        self.model, self.tokenizer, self.labels = model, tokenizer, list(labels)
        self.max_length, self.predictor, self.steps = int(max_length), predictor, int(steps)
        for (
            parameter
        ) in model.parameters():  # only the embeddings' output needs a gradient: a third less work
            parameter.requires_grad_(False)
        self._lig = LayerIntegratedGradients(self._logits, model.get_input_embeddings())
        self._keep = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}

    @classmethod
    def from_folder(
        cls,
        model_dir: str | Path,
        variant: str = "fp32",
        steps: int = DEFAULT_STEPS,
        num_threads: int | None = None,
    ) -> Explainer:
        """The fp32 model for the attributions; ``variant``'s predictor (the same model for fp32) for the
        label. ``num_threads`` sets PyTorch's intra-op threads for the whole process."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if variant not in VARIANT_FILES:
            raise ExportFolderError(f"unknown variant {variant!r}; choose one of {sorted(VARIANT_FILES)}.")
        info = read_info(model_dir)
        if num_threads:
            torch.set_num_threads(num_threads)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if not tokenizer.is_fast:
            raise ExportFolderError(f"{model_dir}: explanations need a fast tokenizer (tokenizer.json).")
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        labels, max_length = list(info["labels"]), int(info["max_length"])
        if variant == "fp32":
            predictor = Predictor.from_model(model, tokenizer, labels, max_length, info=info)
        else:
            predictor = Predictor.from_folder(model_dir, variant, num_threads or 1, spin_wait=False)
        return cls(model, tokenizer, labels, max_length, predictor, steps)

    @property
    def variant(self) -> str:
        return self.predictor.variant

    def _logits(self, input_ids: Any, attention_mask: Any) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def explain(self, texts: Sequence[str], label: str | None = None) -> list[dict[str, Any]]:
        """Per text: the variant's prediction record, the label explained and the words.

        ``label`` (a name, any case) explains that label for every text instead of the predicted one."""
        target = None
        if label is not None:
            target = schema.label_index(label, self.labels) if isinstance(label, str) else None
            if target is None:
                raise UserError(f"unknown label {label!r}; the model's labels are {', '.join(self.labels)}.")
        out = []
        # One text per chunk: int8 quantizes activations per batch, so its scores move (~1e-4) with what
        # shares a batch; alone, a text gets what /predict answers for it alone.
        for text, record in zip(texts, self.predictor.predict(list(texts), batch_size=1), strict=True):
            index = self.labels.index(record[schema.LABEL]) if target is None else target
            out.append({**record, "explained_label": self.labels[index], **self.attribute(text, index)})
        return out

    def attribute(self, text: str, target: int, steps: int | None = None) -> dict[str, Any]:
        """``words``, ``truncated`` and ``convergence_delta`` for label index ``target``."""
        import torch

        enc = self.tokenizer(
            text,
            truncation=True,
            max_length=self.max_length,
            return_overflowing_tokens=True,  # a second row means the text was cut at max_length
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        ids = torch.tensor([enc["input_ids"][0]])
        mask = torch.tensor([enc["attention_mask"][0]])
        reference = ids.clone()
        reference[~torch.isin(ids, torch.tensor(sorted(self._keep)))] = self.tokenizer.pad_token_id
        attributions, delta = self._lig.attribute(
            ids,
            baselines=reference,
            additional_forward_args=(mask,),
            target=target,
            n_steps=steps or self.steps,
            return_convergence_delta=True,
        )
        scores = attributions.sum(-1)[0].detach().numpy()
        words = merge_words(text, enc["offset_mapping"][0], enc["special_tokens_mask"][0], scores)
        return {
            "words": words,
            "truncated": len(enc["input_ids"]) > 1,
            "convergence_delta": float(delta.abs().item()),
        }


def top_words(words: Sequence[dict[str, Any]], k: int) -> list[int]:
    """Indices of the ``k`` words with the highest attribution (the model saw them), best first."""
    seen = [i for i, w in enumerate(words) if w["attribution"] is not None]
    return sorted(seen, key=lambda i: -words[i]["attribution"])[:k]


def without(text: str, words: Sequence[dict[str, Any]], drop: Sequence[int]) -> str:
    """``text`` with the words at ``drop`` deleted (each with the white space before it)."""
    gone = set(drop)
    parts, end = [], 0
    for i, w in enumerate(words):
        if i not in gone:
            parts.append(text[end : w["start"]] if parts else "")
            parts.append(w["word"])
        end = w["end"]
    return "".join(parts)


# -- the command -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from emotions_pl.commands import tool_parser

    p = tool_parser("explain")
    p.add_argument("--model", required=True, help="export folder from `python -m emotions_pl export`")
    p.add_argument("--text", action="append", required=True, help="a text to explain (repeat for more)")
    p.add_argument("--label", help="explain this label instead of the predicted one")
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"integration steps (default {DEFAULT_STEPS}; more: smaller convergence_delta, slower)",
    )
    p.add_argument(
        "--variant",
        choices=sorted(VARIANT_FILES),
        default="fp32",
        help="the variant whose predicted label is explained (give the server's, see /info); the "
        "attributions are always the fp32 model's",
    )
    p.add_argument("--threads", type=int, help="PyTorch intra-op threads (default: PyTorch's)")
    return p


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.steps <= MAX_STEPS:
        raise UserError(f"--steps must be between 1 and {MAX_STEPS}.")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be >= 1.")
    for text in args.text:
        if not text.strip():
            raise UserError("--text is empty or only whitespace.")
    if not Path(args.model).is_dir():
        raise UserError(f"--model {args.model}: no such export folder.")
    labels = list(read_info(args.model).get("labels", []))
    if args.label is not None and schema.label_index(args.label, labels) is None:
        raise UserError(f"unknown label {args.label!r}; the model's labels are {', '.join(labels)}.")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stdout is the JSON lines, stderr the one-line errors
    explainer = Explainer.from_folder(args.model, args.variant, args.steps, args.threads)
    for text, result in zip(args.text, explainer.explain(args.text, args.label), strict=True):
        print(json.dumps({"text": text, **result}, ensure_ascii=False))
    return 0
