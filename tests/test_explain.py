"""Word-level explanations: the words rebuild the text, the attributions add up, the label is the served
variant's, and ``explain`` / ``POST /explain`` behave (validation, API key, 429 when the queue is full).

A tiny random-init model (the smoke export) with the real MiniLM tokenizer; a real server process.
"""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from emotions_pl.artifact.explain import Explainer, merge_words, top_words, without
from emotions_pl.artifact.predictor import Predictor
from emotions_pl.schema import LABELS
from helpers import Server, run_main

# Punctuation, emoji (alone and glued to a word), repeated words, runs of spaces, tabs and newlines,
# leading and trailing white space, a zero-width space the tokenizer drops, an accent it strips.
TRICKY = [
    "i feel happy!! happy, happy... really?",
    "  so   much\tjoy 😊 today 😊😊  ",
    "great😊 don't you think?! café, naïve\n\nsecond line",
    "no no no, NO. no!",
    "wait \u200b what",
]
LONG = " ".join(["a long text that the tokenizer cuts at the model's max length"] * 20)


def rebuild(text: str, words: list[dict]) -> str:
    """The words with the original text between them; the gaps must be white space only."""
    parts, end = [], 0
    for w in words:
        gap = text[end : w["start"]]
        assert gap.strip() == "" and text[w["start"] : w["end"]] == w["word"], (gap, w)
        parts += [gap, w["word"]]
        end = w["end"]
    assert text[end:].strip() == ""
    return "".join(parts) + text[end:]


def _ones(tokenizer, text: str, max_length: int = 64) -> list[dict]:
    """The words of ``text`` with every piece scored 1."""
    enc = _encode(tokenizer, text, max_length)
    n = len(enc["input_ids"][0])
    return merge_words(text, enc["offset_mapping"][0], enc["special_tokens_mask"][0], [1.0] * n)


def _encode(tokenizer, text: str, max_length: int = 64) -> dict:
    return tokenizer(
        text,
        truncation=True,
        max_length=max_length,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )


@pytest.mark.parametrize("text", [*TRICKY, LONG])
def test_pieces_merge_into_the_words_of_the_text(tokenizer, text: str) -> None:
    enc = _encode(tokenizer, text)
    ids = enc["input_ids"][0]
    scores = np.arange(1, len(ids) + 1, dtype=float)  # distinct per piece, so the sums are checkable
    words = merge_words(text, enc["offset_mapping"][0], enc["special_tokens_mask"][0], scores)
    assert rebuild(text, words) == text
    assert [w["word"] for w in words] == text.split()
    # Every piece that is not [CLS]/[SEP] lands in exactly one word.
    special = np.array(enc["special_tokens_mask"][0], dtype=bool)
    total = sum(w["attribution"] for w in words if w["attribution"] is not None)
    assert total == pytest.approx(scores[~special].sum())


def test_emoji_repeats_unseen_and_truncated_words(tokenizer) -> None:
    by_word = {w["word"]: w for w in _ones(tokenizer, "  so   much\tjoy 😊 today 😊😊  ")}
    assert by_word["😊"]["attribution"] == 1.0 and by_word["😊😊"]["attribution"] is not None  # [UNK] pieces
    assert by_word["so"]["start"] == 2 and by_word["much"]["start"] == 7

    words = _ones(tokenizer, "no no no, NO. no!")
    assert [(w["word"], w["start"]) for w in words[:3]] == [("no", 0), ("no", 3), ("no,", 6)]
    assert [w["attribution"] for w in words] == [1.0, 1.0, 2.0, 2.0, 2.0]  # "no," is two pieces

    # The zero-width space is a word to Python and nothing to the tokenizer.
    assert [w["attribution"] for w in _ones(tokenizer, "wait \u200b what")] == [1.0, None, 1.0]

    assert len(_encode(tokenizer, LONG, max_length=16)["input_ids"]) > 1  # overflow rows: truncated
    words = _ones(tokenizer, LONG, max_length=16)
    seen = [w for w in words if w["attribution"] is not None]
    assert seen == words[: len(seen)] and len(seen) < len(words)  # a prefix is seen, the rest is not
    assert sum(w["attribution"] for w in seen) == 14  # the 16 tokens less [CLS] and [SEP]


def test_deleting_words_keeps_the_rest_of_the_text() -> None:
    text = "  i feel  happy!! today"
    words = merge_words(text, [(2, 3), (4, 8), (10, 15), (15, 17), (18, 23)], [0] * 5, [0.1, 0.5, 2, 1, -1])
    assert top_words(words, 2) == [2, 1]  # happy!! (2 + 1), then feel
    assert without(text, words, [2]) == "i feel today"
    assert without(text, words, [0, 3]) == "feel  happy!!"
    assert without(text, words, []) == "i feel  happy!! today"


@pytest.fixture(scope="module")
def explainer(exported_dir: Path) -> Explainer:
    return Explainer.from_folder(exported_dir, "fp32", steps=64)


def test_attributions_add_up_to_the_logit_change(explainer: Explainer, exported_dir: Path) -> None:
    import torch

    predictor = Predictor.from_folder(exported_dir)
    results = explainer.explain(TRICKY)
    for text, result, want in zip(TRICKY, results, predictor.predict(TRICKY), strict=True):
        assert result["label"] == want["label"] == result["explained_label"]
        assert result["scores"] == pytest.approx(want["scores"], abs=1e-6)
        assert rebuild(text, result["words"]) == text and result["truncated"] is False
        # Completeness: the attributions sum to logit(text) - logit(reference), up to the reported delta.
        enc = explainer.tokenizer(text, truncation=True, max_length=explainer.max_length, return_tensors="pt")
        ids = enc["input_ids"]
        keep = torch.isin(
            ids, torch.tensor([explainer.tokenizer.cls_token_id, explainer.tokenizer.sep_token_id])
        )
        reference = torch.where(keep, ids, explainer.tokenizer.pad_token_id)
        target = LABELS.index(result["explained_label"])
        with torch.no_grad():
            p = explainer._logits(ids, enc["attention_mask"])[0, target].item()
            p_ref = explainer._logits(reference, enc["attention_mask"])[0, target].item()
        total = sum(w["attribution"] or 0.0 for w in result["words"])
        assert abs(total - (p - p_ref)) == pytest.approx(result["convergence_delta"], abs=1e-5)
        assert result["convergence_delta"] < 0.01

    named = explainer.explain(["i feel happy!! happy"], label="FEAR")[0]
    assert named["explained_label"] == "fear" and named["label"] in LABELS
    assert explainer.explain([LONG])[0]["truncated"] is True


def test_int8_label_comes_from_int8(exported_dir: Path) -> None:
    explainer = Explainer.from_folder(exported_dir, "int8", steps=8)
    want = Predictor.from_folder(exported_dir, "int8").predict(TRICKY, batch_size=1)  # each text alone
    got = explainer.explain(TRICKY)
    assert explainer.variant == "int8"
    assert [g["label"] for g in got] == [w["label"] for w in want] == [g["explained_label"] for g in got]
    assert all(g["scores"] == pytest.approx(w["scores"], abs=1e-5) for g, w in zip(got, want, strict=True))


def test_explain_command(exported_dir: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["explain", "--model", str(exported_dir), "--text", TRICKY[1], "--text", TRICKY[0], "--steps", "8"]
    assert run_main(*args, "--label", "joy") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in lines] == [TRICKY[1], TRICKY[0]]
    assert all(r["explained_label"] == "joy" and rebuild(r["text"], r["words"]) == r["text"] for r in lines)

    for bad, message in [
        (["--label", "boredom"], "unknown label 'boredom'; the model's labels are sadness, joy"),
        (["--steps", "0"], "--steps must be between 1 and 512"),
        (["--text", "  \t"], "--text is empty or only whitespace"),
    ]:
        assert run_main(*args, *bad) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1, err
    assert run_main("explain", "--model", "/nonexistent/export", "--text", "hi") == 2
    assert "no such export folder" in capsys.readouterr().err


# -- POST /explain on a real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(int8_server: Server) -> Server:
    return int8_server  # the session's int8 server (conftest)


@pytest.mark.integration
def test_explain_rebuilds_the_texts_and_explains_the_served_label(server: Server, exported_dir: Path) -> None:
    # One text per request: int8's scores move (~1e-4) with what shares a batch; /explain predicts alone.
    served = [httpx.post(f"{server.url}/predict", json={"text": t}, timeout=60).json() for t in TRICKY]
    answer = httpx.post(f"{server.url}/explain", json={"texts": TRICKY}, timeout=60)
    assert answer.status_code == 200, answer.text
    results = answer.json()
    assert len(results) == len(TRICKY)
    for text, result, prediction in zip(TRICKY, results, served, strict=True):
        assert rebuild(text, result["words"]) == text
        assert result["label"] == prediction["label"] == result["explained_label"]  # /predict's (int8)
        assert result["scores"] == pytest.approx(prediction["scores"], abs=1e-5)
        assert all(isinstance(w["attribution"], float) for w in result["words"] if w["word"] != "\u200b")
    one = httpx.post(f"{server.url}/explain", json={"text": LONG, "label": "anger"}, timeout=60).json()
    assert one["explained_label"] == "anger" and one["truncated"] is True
    assert rebuild(LONG, one["words"]) == LONG and one["words"][-1]["attribution"] is None

    info = httpx.get(f"{server.url}/info", timeout=10).json()["model"]
    assert info["limits"]["max_explain_texts"] == 8 and info["limits"]["explain_queue"] == 8
    assert info["explain"]["steps"] == 32 and info["explain"]["attributions"] == "fp32"


EXPLAIN_BAD_INPUT = {
    "invalid JSON": (
        {"content": b'{"text": "i', "headers": {"Content-Type": "application/json"}},
        400,
        "JSON",
    ),
    "no content type": ({"content": b'{"text": "hi"}'}, 415, "Content-Type"),
    "blank text": ({"json": {"text": " \n "}}, 422, "empty or only whitespace"),
    "9 texts": ({"json": {"texts": ["hi"] * 9}}, 422, "at most 8 items"),
    "no texts": ({"json": {"texts": []}}, 422, "at least 1 item"),
    "unknown label": ({"json": {"text": "hi", "label": "boredom"}}, 422, "label must be one of sadness"),
    "null label": ({"json": {"text": "hi", "label": None}}, 422, "label must be one of"),
    "both shapes": ({"json": {"text": "hi", "texts": ["hi"]}}, 422, "exactly one of"),
    "extra field": ({"json": {"text": "hi", "steps": 500}}, 422, "Extra inputs"),
    "too long": ({"json": {"text": "x" * 2001}}, 422, "limit is 2000"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", EXPLAIN_BAD_INPUT)
def test_bad_explain_input_is_a_client_error(server: Server, case: str) -> None:
    request, status, message = EXPLAIN_BAD_INPUT[case]
    answer = httpx.post(f"{server.url}/explain", timeout=30, **request)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert message in json.dumps(answer.json()["detail"])


@pytest.mark.integration
def test_openapi_documents_explain(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    route = spec["paths"]["/explain"]["post"]
    assert {"400", "413", "415", "422", "429", "500"} <= set(route["responses"])
    assert "401" not in route["responses"]  # no key configured
    body = route["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ExplainRequest"}
    schemas = spec["components"]["schemas"]
    assert len(schemas["ExplainRequest"]["oneOf"]) == 2
    assert schemas["ManyTextsToExplain"]["properties"]["texts"]["maxItems"] == 8
    assert schemas["OneTextToExplain"]["properties"]["label"]["enum"] == LABELS
    assert {"word", "start", "end", "attribution"} <= set(schemas["Word"]["properties"])


@pytest.mark.integration
def test_a_full_explain_queue_answers_429_and_predict_still_answers(
    exported_dir: Path, tmp_path: Path
) -> None:
    """One request admitted at a time, slow explanations (256 steps, 4 long texts: seconds, while the
    burst arrives within milliseconds): a burst gets 429s, /predict answers meanwhile, and the queue
    frees once the burst is done. With an API key."""
    key = {"X-API-Key": "k3y"}
    srv = Server(
        exported_dir,
        tmp_path / "server.log",
        "--explain-queue",
        "1",
        "--explain-steps",
        "256",
        env={"LIT_SERVER_API_KEY": "k3y"},
    )
    try:
        assert httpx.post(f"{srv.url}/explain", json={"text": "hi"}, timeout=30).status_code == 401
        body = {"texts": [LONG] * 4}

        def explain(_: int) -> httpx.Response:
            return httpx.post(f"{srv.url}/explain", json=body, headers=key, timeout=120)

        with ThreadPoolExecutor(12) as pool:
            burst = pool.map(explain, range(12))
            predicted = httpx.post(
                f"{srv.url}/predict", json={"text": "i feel fine"}, headers=key, timeout=30
            )
            answers = list(burst)
        statuses = [a.status_code for a in answers]
        assert set(statuses) == {200, 429}, statuses
        busy = next(a for a in answers if a.status_code == 429)
        assert busy.headers["content-type"] == "application/json"
        assert "busy: 1 requests are running or waiting" in busy.json()["detail"]
        assert predicted.status_code == 200 and predicted.json()["label"] in LABELS
        again = httpx.post(f"{srv.url}/explain", json={"text": "calm again"}, headers=key, timeout=60)
        assert again.status_code == 200 and rebuild("calm again", again.json()["words"]) == "calm again"
    finally:
        srv.stop(signal.SIGTERM)
