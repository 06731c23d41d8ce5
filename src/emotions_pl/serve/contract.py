"""The HTTP contract: the request limits as JSON Schema, the pydantic request and response models, and the
error answers each route documents (``/openapi.json`` is built from these).

The limits themselves are numbers in ``settings`` (no pydantic there, so ``serve --help`` stays light);
the rules on them live here, once: the validators, and the JSON Schema that says the same thing.

No ``from __future__ import annotations``: FastAPI and LitServe read these types at run time.
"""

import re
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator

from emotions_pl import schema
from emotions_pl.serve.settings import (
    BODY_DEADLINE_S,
    DISCARD_BYTES,
    MAX_BODY_BYTES,
    MAX_EXPLAIN_TEXTS,
    MAX_TEXT_CHARS,
    MAX_TEXTS,
)

# "Not blank": at least one character that is not white space as JSON Schema's regexes (ECMA-262) define it
# (WhiteSpace and LineTerminator). Written as a class of literal characters, not ``\S``, because ``\s``
# differs between engines (Python's also matches U+001C-U+001F and U+0085; Rust's misses U+FEFF): the
# server, Schemathesis and any client-side validator then agree on every string.
WHITE_SPACE = (
    "\t\n\v\f\r \u00a0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
NOT_BLANK = f"[^{WHITE_SPACE}]"
_NOT_BLANK = re.compile(NOT_BLANK)


def check_text(text: str) -> str:
    """One text of a request, checked: not blank, at most ``MAX_TEXT_CHARS``; a lone surrogate replaced."""
    if not _NOT_BLANK.search(text):
        raise ValueError("text is empty or only whitespace")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (valid JSON escape, not UTF-8): the tokenizer needs UTF-8
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


TEXT_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS, "pattern": NOT_BLANK}
Text = Annotated[str, Field(strict=True), AfterValidator(check_text)]


def request_schemas(labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """What the validators enforce, in JSON Schema: exactly one of two shapes, non-blank texts, the limits.

    The published ``PredictRequest`` is ``oneOf`` two closed objects, so fuzzers and client generators
    see the rule (and typed clients get ``OneText | ManyTexts``); the pydantic model below validates
    it with readable messages. ``ExplainRequest`` is the same with at most ``MAX_EXPLAIN_TEXTS`` texts
    and an optional ``label`` (one of the model's ``labels``)."""
    text = {
        **TEXT_SCHEMA,
        "title": "Text",
        "description": f"one text, 1 to {MAX_TEXT_CHARS} characters, not only whitespace",
    }
    texts = {
        "type": "array",
        "items": TEXT_SCHEMA,
        "minItems": 1,
        "maxItems": MAX_TEXTS,
        "title": "Texts",
        "description": f"1 to {MAX_TEXTS} texts, each like `text`",
    }
    label = {
        "type": "string",
        "enum": list(labels),
        "title": "Label",
        "description": "explain this label instead of the predicted one",
    }
    explain_texts = {
        **texts,
        "maxItems": MAX_EXPLAIN_TEXTS,
        "description": f"1 to {MAX_EXPLAIN_TEXTS} texts, each like `text`",
    }
    return {
        "OneTextToExplain": {
            "type": "object",
            "title": "OneTextToExplain",
            "description": "one text, answered with one explanation",
            "properties": {"text": text, "label": label},
            "required": ["text"],
            "additionalProperties": False,
        },
        "ManyTextsToExplain": {
            "type": "object",
            "title": "ManyTextsToExplain",
            "description": "a list of texts, answered with a list of explanations in the same order",
            "properties": {"texts": explain_texts, "label": label},
            "required": ["texts"],
            "additionalProperties": False,
        },
        "ExplainRequest": {
            "title": "ExplainRequest",
            "description": "exactly one of `text` or `texts` (at most "
            f"{MAX_EXPLAIN_TEXTS}), and optionally the `label` to explain",
            "oneOf": [
                {"$ref": "#/components/schemas/OneTextToExplain"},
                {"$ref": "#/components/schemas/ManyTextsToExplain"},
            ],
            "examples": [{"text": "i feel great today"}, {"texts": ["so happy", "so sad"], "label": "joy"}],
        },
        "OneText": {
            "type": "object",
            "title": "OneText",
            "description": "one text, answered with one prediction",
            "properties": {"text": text},
            "required": ["text"],
            "additionalProperties": False,
        },
        "ManyTexts": {
            "type": "object",
            "title": "ManyTexts",
            "description": "a list of texts, answered with a list of predictions in the same order",
            "properties": {"texts": texts},
            "required": ["texts"],
            "additionalProperties": False,
        },
        "PredictRequest": {
            "title": "PredictRequest",
            "description": "exactly one of `text` (one prediction) or `texts` (a list, in the same order)",
            "oneOf": [{"$ref": "#/components/schemas/OneText"}, {"$ref": "#/components/schemas/ManyTexts"}],
            "examples": [{"text": "i feel great today"}, {"texts": ["so happy", "so sad"]}],
        },
    }


class PredictRequest(BaseModel):
    """Exactly one of ``text`` (answered with one prediction) or ``texts`` (a list, in the same order)."""

    model_config = ConfigDict(extra="forbid")
    text: Text | None = None
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "PredictRequest":
        given = self.model_fields_set & {"text", "texts"}  # an explicit null counts as given (and is wrong)
        if len(given) != 1 or getattr(self, given.pop()) is None:
            raise ValueError("give exactly one of 'text' (a string) or 'texts' (a list of strings)")
        return self


class Prediction(BaseModel):
    """The prediction record of ``schema.prediction``."""

    label: str = Field(description="the most probable emotion")
    score: float = Field(description="its probability")
    scores: dict[str, float] = Field(description="probability of every label")


assert set(Prediction.model_fields) == {schema.LABEL, schema.SCORE, schema.SCORES}  # one record everywhere


class _ExplainFields(PredictRequest):
    """``PredictRequest`` with at most ``MAX_EXPLAIN_TEXTS`` texts and an optional label to explain."""

    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_EXPLAIN_TEXTS)] | None = None
    label: Annotated[str, Field(strict=True)] | None = None


def explain_request_model(labels: Sequence[str]) -> type[_ExplainFields]:
    """``ExplainRequest`` for a model with these labels: ``_ExplainFields`` and a check that ``label``,
    when given, is one of them. Built per server (the labels are the export's), never patched."""
    known = tuple(labels)

    def known_label(request: _ExplainFields) -> _ExplainFields:
        if "label" in request.model_fields_set and request.label not in known:
            raise ValueError(f"label must be one of {', '.join(known)} (got {request.label!r})")
        return request

    return create_model(
        "ExplainRequest",
        __base__=_ExplainFields,
        __doc__=_ExplainFields.__doc__,
        __validators__={"_known_label": model_validator(mode="after")(known_label)},
    )


class Word(BaseModel):
    """A word of the text (a run of non-whitespace characters) and its attribution."""

    word: str = Field(description="`text[start:end]`")
    start: int = Field(ge=0, description="offset of its first character, in Unicode code points")
    end: int = Field(ge=0, description="offset just past its last character")
    attribution: float | None = Field(
        description="its share of the explained label's logit (positive: for the label); null when "
        "the model never saw it (past max_length tokens, or only characters the tokenizer drops)"
    )


class Explanation(Prediction):
    """The served variant's prediction, the label explained and the words' attributions (fp32 model)."""

    explained_label: str = Field(description="`label` unless the request named another")
    words: list[Word] = Field(
        description="every word of the text, in order; with the text between them they rebuild it exactly"
    )
    truncated: bool = Field(description="the text is longer than the model's max_length tokens")
    convergence_delta: float = Field(
        description="|sum of the attributions - (logit - the reference's logit)|: the integration error"
    )


class Issue(BaseModel):
    """One problem with the request (FastAPI's validation item, without the input echoed back)."""

    loc: list[str | int] = Field(description="where: body, then the field path")
    msg: str
    type: str


class Error(BaseModel):
    """Every error answer: ``detail`` says what is wrong (a sentence, or the list of problems)."""

    detail: str | list[Issue]


class ValidationFailure(BaseModel):
    """422: the body is JSON but not a valid request."""

    detail: list[Issue]


class Info(BaseModel):
    """/info: the model (name, variant and why, labels, metrics, limits, batching) and the server."""

    model_config = ConfigDict(extra="allow")
    model: dict[str, Any]
    server: dict[str, Any]


def error_responses(*codes: int, key_required: bool = False) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route for these error codes: each with its model and what it means (401
    only when a key is required)."""
    text = {
        400: "the body is not valid JSON (or the client went away before sending it all)",
        401: "the API key is missing or wrong (X-API-Key, or Authorization: Bearer)",
        408: f"the body did not arrive within {BODY_DEADLINE_S:g} s; the connection is closed",
        413: f"the body is over {MAX_BODY_BYTES} bytes (bodies up to {DISCARD_BYTES} bytes are read and "
        "discarded first; the connection is closed)",
        415: "Content-Type is missing or not application/json",
        422: "the JSON is not a valid request: exactly one of text/texts, each text not blank and at most "
        f"{MAX_TEXT_CHARS} characters, at most {MAX_TEXTS} texts ({MAX_EXPLAIN_TEXTS} for /explain), no "
        "other field (/explain: `label`, one of the model's labels)",
        429: "/explain only: --explain-queue requests are already running or waiting; retry later",
        500: "internal error (nothing the client can fix)",
        504: "the request waited in the queue past --timeout",
    }
    wanted = [c for c in codes if c != 401 or key_required]
    return {c: {"model": ValidationFailure if c == 422 else Error, "description": text[c]} for c in wanted}


TEXT = {"type": "string"}


def text_response(description: str, **extra: Any) -> dict[str, Any]:
    """A ``text/plain`` answer for a route's ``responses``."""
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string", **extra}}}}
