"""Helpers shared by the tests and the benchmarks (``scripts/bench/``): the repository and data paths,
running ``python -m emotions_pl`` (a subprocess, or in this process), a free port, waiting for a
condition, and a server process that must start, answer /health and stop cleanly. ``conftest.py`` holds
only fixtures.

The tests import it as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path`` for
``conftest.py``); the benchmarks, run from the repository root as ``python -m scripts.bench.<name>``, as
``from tests.helpers import ...`` (``tests/`` has no ``__init__.py``: a namespace package found from the
root). Needs httpx and psutil, not pytest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[2]
# The real data set (never committed): tests that need it skip without it (the shared_data fixture).
SHARED_DATA = Path(os.environ.get("EMOTIONS_SHARED_DATA", REPO.parent / "shared" / "data" / "emotion"))
API_KEY_ENV = "LIT_SERVER_API_KEY"
SERVER_KEY = "s3cret"  # the API key of the session's keyed server (conftest.keyed_server)
SERVE = (sys.executable, "-m", "emotions_pl", "serve")
K8S_MANIFEST = REPO / "docker" / "k8s" / "serve.yaml"
BATCHING = ("--max-batch-size", "--batch-timeout", "--workers-per-device")


def k8s_documents() -> dict[str, dict]:
    """The Kubernetes manifest's documents by kind."""
    import yaml

    return {d["kind"]: d for d in yaml.safe_load_all(K8S_MANIFEST.read_text()) if d}


def manifest_batching() -> list[str]:
    """The batching flags (and values) of the Kubernetes Deployment's serve command."""
    args = k8s_documents()["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"][1:]
    return [a for i, a in enumerate(args) if a in BATCHING or (i and args[i - 1] in BATCHING)]


def _sigint_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT at its default, as for a terminal's foreground process. A test run
    started in the background from a script inherits SIGINT ignored (shells do that to background jobs)
    and would pass it on, and the server would not stop on Ctrl+C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float = 60, interval: float = 0.5) -> None:
    """Poll ``condition`` until it returns something true; AssertionError after ``timeout`` seconds.

    An exception raised by ``condition`` (an assertion that the process is still alive) stops the wait.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s"
        time.sleep(interval)


class Server:
    """``python -m emotions_pl serve --model DIR --port P ARGS`` on a free loopback port, in its own
    session (a process group, as under a terminal); returns once /health answers 200.

    ``env`` is added to the environment (from which the API key variable is removed first);
    ``command`` replaces ``python -m emotions_pl serve`` for another server that takes ``--model`` and
    ``--port`` (the benchmark's baseline). ``stop`` checks exit code 0, that no process of the server
    is left, and that its log holds no traceback.
    """

    def __init__(
        self,
        model_dir: Path | str,
        log_path: Path,
        *args: str,
        env: dict[str, str] | None = None,
        command: Sequence[str] = SERVE,
        ready_timeout: float = 180,
    ):
        self.args = args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environ = {k: v for k, v in os.environ.items() if k != API_KEY_ENV} | (env or {})
        self.key = environ.get(API_KEY_ENV)  # the API key it asks for, or None
        with log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [*command, "--model", str(model_dir), "--port", str(self.port), *args],
                cwd=REPO,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_sigint_as_in_a_terminal,
            )
        self.family: list[psutil.Process] = []
        try:
            wait_for(self._healthy, ready_timeout, interval=0.25)
        except AssertionError as error:
            self._kill_group()
            raise AssertionError(f"server not healthy: {error}\n{self.log()}") from None
        self.family = psutil.Process(self.proc.pid).children(recursive=True)

    def _healthy(self) -> bool:
        assert self.proc.poll() is None, f"it exited early with {self.proc.returncode}"
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in self.family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait(timeout=30)

    def stop(self, sig: int = signal.SIGINT) -> None:
        """SIGINT to the whole group (Ctrl+C in a terminal), SIGTERM to the main process (docker stop).

        Whatever is still running after a failed check is killed, so a failure leaves no process behind.
        """
        if sig == signal.SIGINT:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self._kill_group()
            raise
        _, alive = psutil.wait_procs(self.family, timeout=15)
        if alive:
            self._kill_group()
        assert rc == 0, f"server exited with {rc}:\n{self.log()}"
        assert not alive, f"orphaned processes after {signal.Signals(sig).name}: {alive}"
        assert "Traceback" not in self.log(), self.log()


def run_module(
    *args: str,
    cwd: Path = REPO,
    timeout: float = 600,
    env: dict | None = None,
    environ: dict | None = None,
    expect: int = 0,
) -> subprocess.CompletedProcess:
    """Run ``python -m emotions_pl ARGS`` as a user would; fail the test with its output unless it exits
    ``expect``. ``env`` adds to this process's environment; ``environ`` replaces it."""
    proc = subprocess.run(
        [sys.executable, "-m", "emotions_pl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ if environ is not None else {**os.environ, **(env or {})},
    )
    assert proc.returncode == expect, (
        f"emotions_pl {' '.join(args)}: exit {proc.returncode}, expected {expect}:\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


def run_main(*args: str, env: dict | None = None) -> int:
    """``python -m emotions_pl ARGS`` in this process, through the real entry point; its exit code.
    ``env`` is added to the environment for the call.

    Output goes to the test's capsys (or whatever ``sys.stdout``/``sys.stderr`` are at the time).
    """
    import pytest  # only here: the benchmarks import this module without pytest

    from emotions_pl.__main__ import main

    # What the entry point changes for the processes it starts, given back: LightningCLI reads (and
    # the dispatcher rewrites) sys.argv; --debug, seed_everything and the offline switch set variables.
    argv, environ = list(sys.argv), dict(os.environ)
    os.environ.update(env or {})
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
    finally:
        sys.argv[:] = argv
        os.environ.clear()
        os.environ.update(environ)
    return exit_info.value.code


def run_here(*args: str, env: dict | None = None, expect: int = 0) -> subprocess.CompletedProcess:
    """``run_module`` in this process: ``run_main(ARGS)`` with stdout and stderr captured, ``env`` added
    to the environment for the call; fails the test with both streams unless it exits ``expect``.

    For what needs no process of its own (most commands): it saves the interpreter's start and imports.
    Session fixtures use it too, since they cannot take capsys.
    """
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_main(*args, env=env)
    assert code == expect, (
        f"emotions_pl {' '.join(args)}: exit {code}, expected {expect}:\n"
        f"{out.getvalue()[-3000:]}\n{err.getvalue()[-5000:]}"
    )
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
