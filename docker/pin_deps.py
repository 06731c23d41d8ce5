"""Turn pyproject.toml + requirements/lock.txt into what an image (or CI) installs before the source.

Writes into ``--out``: ``requirements.txt`` (the project's runtime dependencies plus the chosen extras),
``constraints.txt`` (every pin of the lock except torch and other builds with a local label such as
``+cpu``, which only exist on the PyTorch index) and ``torch-version`` (the lock's torch release without
its label, so that one lock serves the CPU and the CUDA index). Standard library only: it runs in a
bare ``python:3.11-slim`` build stage.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;+]+)(?P<local>\+\S+)?$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def split_lock(lock: Path, project: str) -> tuple[str, list[str]]:
    """Return the torch release and the constraint lines; fail naming the line for anything unexpected."""
    torch_version, constraints = None, []
    for number, raw in enumerate(lock.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-e ") or " @ " in line:
            continue  # editable or direct-URL installs (the project itself): not pins
        match = PIN.match(line)
        if match is None:
            raise ValueError(
                f"{lock} line {number}: expected 'name==version' (pip freeze format), got {raw!r}."
            )
        name = normalize(match["name"])
        if name == "torch":
            torch_version = match["version"]
        elif name != project and not match["local"]:
            constraints.append(line)
    if torch_version is None:
        raise ValueError(
            f"{lock}: no 'torch==<version>' line; the images install torch at the locked release."
        )
    return torch_version, constraints


def requirements(pyproject: Path, extras: list[str]) -> tuple[str, list[str]]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    deps = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"{pyproject}: no optional dependency group {extra!r}; have {sorted(optional)}.")
        deps += optional[extra]
    return normalize(project["name"]), deps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--lock", type=Path, default=Path("requirements/lock.txt"))
    parser.add_argument("--extras", default="", help="comma-separated optional dependency groups")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        name, deps = requirements(args.pyproject, [e for e in args.extras.split(",") if e.strip()])
        torch_version, constraints = split_lock(args.lock, name)
    except (OSError, ValueError, KeyError) as e:
        print(f"pin_deps: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "requirements.txt").write_text("\n".join(deps) + "\n", encoding="utf-8")
    (args.out / "constraints.txt").write_text("\n".join(constraints) + "\n", encoding="utf-8")
    (args.out / "torch-version").write_text(torch_version + "\n", encoding="utf-8")
    print(f"pin_deps: torch {torch_version}, {len(deps)} requirements, {len(constraints)} pins -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
