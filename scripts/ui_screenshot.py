"""The /ui screenshot in docs/serving.md, of the pipeline's model: serve it, ask the page, take the picture.

    .venv/bin/python scripts/ui_screenshot.py --model models/emotions --output docs/images/serve-ui.png

Starts ``python -m emotions_pl serve`` on a free loopback port, drives Debian's Chromium with
Playwright (never ``playwright install``), types one text, waits for the bars, saves a PNG and stops
the server with SIGTERM. Prints the label and score the page showed, for the caption.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
TEXT = "i am thrilled that we finally won the game"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"error: the server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"error: {url}/health did not answer within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/emotions"))
    parser.add_argument("--output", type=Path, default=Path("docs/images/serve-ui.png"))
    parser.add_argument("--text", default=TEXT)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "emotions_pl", "serve", "--model", str(args.model), "--port", str(port)]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_healthy(url, server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 900, "height": 900})
            page.goto(f"{url}/ui")
            page.get_by_label("Text").fill(args.text)
            page.get_by_role("button", name="Predict", exact=True).click()
            page.wait_for_selector("#bars li")
            shown = f"{page.inner_text('#label').strip()} {page.inner_text('#score').strip()}"
            args.output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.output), full_page=True)
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)  # a server started from a script ignores SIGINT
        server.wait(timeout=60)
    print(f"{args.output}: {args.text!r} -> {shown} ({args.model})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
