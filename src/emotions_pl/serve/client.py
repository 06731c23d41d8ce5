"""A small client for ``python -m emotions_pl serve`` (standard library only).

>>> client = EmotionClient("http://127.0.0.1:8000")          # api_key defaults to $LIT_SERVER_API_KEY
>>> client.predict("i feel wonderful today")["label"]
'joy'
>>> [r["label"] for r in client.predict_many(["so sad", "so angry"])]
['sadness', 'anger']
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

MAX_TEXTS_PER_REQUEST = 64  # the server's documented per-request limit


class EmotionServiceError(RuntimeError):
    """The server answered with an error; ``status`` is the HTTP code, ``detail`` its JSON explanation."""

    def __init__(self, status: int, detail: Any):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class EmotionClient:
    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 30):
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("LIT_SERVER_API_KEY")
        self.timeout = timeout

    def _call(self, path: str, payload: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        data = None
        if payload is not None:
            data = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
                is_json = response.headers.get_content_type() == "application/json"
                return json.loads(body) if is_json else body.decode()
        except urllib.error.HTTPError as e:
            raw = e.read().decode(errors="replace")
            try:
                detail = json.loads(raw).get("detail", raw)
            except (ValueError, AttributeError):
                detail = raw
            raise EmotionServiceError(e.code, detail) from None

    def predict(self, text: str) -> dict[str, Any]:
        """``{"label", "score", "scores"}`` for one text."""
        return self._call("/predict", {"text": text})

    def predict_many(self, texts: list[str]) -> list[dict[str, Any]]:
        """Predictions for any number of texts, in order (sent in requests of at most 64)."""
        results: list[dict[str, Any]] = []
        for start in range(0, len(texts), MAX_TEXTS_PER_REQUEST):
            results += self._call("/predict", {"texts": texts[start : start + MAX_TEXTS_PER_REQUEST]})
        return results

    def health(self) -> bool:
        try:
            return self._call("/health") == "ok"
        except (EmotionServiceError, OSError):
            return False

    def info(self) -> dict[str, Any]:
        return self._call("/info")
