"""The /ui page and /docs in a real browser: Debian's Chromium driven by Playwright, against a real server.

Never ``playwright install``: the browser is the system's ``/usr/bin/chromium`` (``.ci/run`` installs it).
Skips, saying why, when Chromium or Playwright is missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import SERVER_KEY, Server

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("EMOTIONS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    missing = (
        None if CHROMIUM.is_file() else f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    )
    try:
        from playwright import sync_api
    except ImportError:
        missing = missing or "playwright is not installed (requirements/lock.txt pins it)"
    if missing:
        if os.environ.get("EMOTIONS_REQUIRE_BROWSER") == "1":  # CI: the browser test must run
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _open(browser: object, url: str) -> object:
    page = browser.new_page(viewport={"width": 900, "height": 1000})
    offsite: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(url) else offsite.append(r.url))
    page.offsite = offsite
    page.goto(f"{url}/ui")
    return page


def test_the_page_predicts_and_shows_errors(browser: object, int8_server: Server, tmp_path: Path) -> None:
    page = _open(browser, int8_server.url)
    assert page.get_by_label("Text").is_visible() and not page.get_by_label("API key").is_visible()
    page.get_by_label("Text").fill("i am so happy and grateful for my friends today")
    page.get_by_role("button", name="Predict", exact=True).click()
    page.wait_for_selector("#bars li")
    label = page.inner_text("#label").strip().lower()
    rows = page.eval_on_selector_all(
        "#bars li", "els => els.map(e => [e.dataset.label, parseFloat(e.dataset.value)])"
    )
    labels = [name for name, _ in rows]
    values = [value for _, value in rows]
    assert sorted(labels) == sorted(["sadness", "joy", "love", "anger", "fear", "surprise"])
    assert values == sorted(values, reverse=True) and labels[0] == label
    assert abs(sum(values) - 1) < 1e-3
    shown = [
        float(t.strip(" %"))
        for t in page.eval_on_selector_all("#bars .pct", "e => e.map(x => x.textContent)")
    ]
    assert abs(sum(shown) - 100) < 0.5  # the rounded percentages too
    assert page.inner_text("#score").endswith("%") and "ms" in page.inner_text("#latency")
    page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)

    page.get_by_label("Text").fill("   ")
    page.get_by_label("Text").press("Enter")  # Enter predicts too
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert "empty or only whitespace" in page.inner_text("#error")
    page.screenshot(path=str(tmp_path / "ui-error.png"), full_page=True)

    page.get_by_role("button", name="Example for fear: i feel nervous about the exam tomorrow").click()
    page.wait_for_function("document.getElementById('error').textContent === ''")
    assert page.get_by_label("Text").input_value() == "i feel nervous about the exam tomorrow"
    assert page.offsite == []  # offline: the page loads nothing from elsewhere
    page.close()


def test_the_page_explains_by_shading_the_words(browser: object, int8_server: Server, tmp_path: Path) -> None:
    page = _open(browser, int8_server.url)
    text = "  i feel happy!! happy 😊, really?\n\ttruly  "
    page.get_by_label("Text").fill(text)
    page.get_by_role("button", name="Explain", exact=True).click()
    page.wait_for_selector("#explanation .w")
    # The shaded view is the text itself: spacing, punctuation, emoji and the repeated word intact.
    assert page.eval_on_selector("#explanation", "e => e.textContent") == text
    words = page.eval_on_selector_all(
        "#explanation .w", "els => els.map(e => [e.textContent, e.dataset.attribution, e.className])"
    )
    assert [w for w, _, _ in words] == text.split()
    values = [float(a) for _, a, _ in words]
    assert all(("against" in cls) == (value < 0) for (_, _, cls), value in zip(words, values, strict=True))
    assert page.inner_text("#label").strip().lower() in page.inner_text(
        "#explain-note"
    )  # the label explained
    assert page.locator("#bars li").count() == 6  # the prediction is shown too
    page.screenshot(path=str(tmp_path / "ui-explain.png"), full_page=True)
    page.get_by_role("button", name="Predict", exact=True).click()  # a plain prediction hides the old view
    page.wait_for_selector("#explain-box", state="hidden")
    assert page.offsite == []
    page.close()


def test_the_page_asks_for_the_key_and_sends_it(browser: object, keyed_server: Server) -> None:
    page = _open(browser, keyed_server.url)
    key = page.get_by_label("API key")
    key.wait_for(state="visible")  # /info answered 401: the page shows the key field
    page.get_by_label("Text").fill("i am furious about how they treated us")
    page.get_by_role("button", name="Predict", exact=True).click()
    page.wait_for_function("document.getElementById('error').textContent.includes('API key')")
    key.fill(SERVER_KEY)
    page.get_by_role("button", name="Predict", exact=True).click()
    page.wait_for_selector("#bars li")
    assert page.inner_text("#error") == ""
    # /info, now called with the key, names the variant.
    page.wait_for_function("document.getElementById('model').textContent.includes('(int8)')")
    page.close()


def test_docs_render_offline(browser: object, int8_server: Server) -> None:
    page = browser.new_page()
    offsite: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(int8_server.url) else offsite.append(r.url))
    page.goto(f"{int8_server.url}/docs")
    page.wait_for_selector("text=/predict", timeout=30_000)  # Swagger UI rendered the operations
    assert offsite == []
    page.close()
