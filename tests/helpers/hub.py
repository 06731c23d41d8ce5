"""A local Hugging Face hub for tests: the endpoints ``huggingface_hub``, ``transformers`` and
``datasets`` call, with the status codes and headers the real hub gives, over files on disk.

Why our own: olah 0.5.4 (the self-hosted mirror on PyPI), serving local git mirrors offline, answers
a file a repo lacks with 401 ``RepoNotFound`` (hard-coded in ``resolve_requested_commit``; no setting
changes it), and transformers 5 probes optional files, so ``AutoTokenizer.from_pretrained`` failed.
Nothing else on PyPI serves a hub offline. This is the protocol only, from what the clients read:

- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (``/datasets/{repo}/...`` for data sets): 200 with
  ``X-Repo-Commit``, ``ETag`` (the git blob id), ``Content-Length``, byte ranges; an LFS file (by
  suffix, as the hub's ``.gitattributes``) answers 302 to its content-addressed blob with
  ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``; a missing file 404 ``EntryNotFound`` (with
  ``X-Repo-Commit``, which the client uses to cache the absence), a missing revision 404
  ``RevisionNotFound``, a missing repo 401 ``RepoNotFound`` (what the hub tells an anonymous client);
- ``GET /api/{models,datasets}/{repo}[/revision/{rev}]``: the repo info (``sha``, ``siblings``);
- ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``recursive``) and ``POST .../paths-info/{rev}``:
  the listings ``HfFileSystem`` (so ``datasets``) walks.

Every request is logged (``HubServer.log``), so a test can tell a cache hit from a download. The
server runs in a thread of the test process and binds 127.0.0.1 only; ``stop``/``start`` take it
down and bring it back on the same port.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".arrow", ".onnx", ".pt", ".h5", ".msgpack", ".zip")
CONTENT_TYPES = {".json": "application/json", ".md": "text/markdown", ".txt": "text/plain"}
LAST_MODIFIED = "2024-01-01T00:00:00.000Z"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubFile:
    path: str
    source: Path
    size: int
    oid: str  # the git blob id; for an LFS file the blob id of its pointer, as on the hub
    sha256: str | None  # LFS files only

    @classmethod
    def load(cls, path: str, source: Path) -> HubFile:
        data = source.read_bytes()
        if not path.endswith(LFS_SUFFIXES):
            return cls(path, source, len(data), git_blob_id(data), None)
        sha256 = hashlib.sha256(data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
        return cls(path, source, len(data), git_blob_id(pointer.encode()), sha256)

    def entry(self) -> dict:
        """The tree / paths-info record of this file."""
        entry: dict = {"type": "file", "oid": self.oid, "size": self.size, "path": self.path}
        if self.sha256:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": 134}
        return entry

    def read(self, start: int = 0, end: int | None = None) -> bytes:
        with self.source.open("rb") as f:
            f.seek(start)
            return f.read((self.size if end is None else end + 1) - start)


@dataclass
class HubRepo:
    """One repository: ``files`` maps a path in the repo to a file on disk."""

    repo_id: str
    repo_type: str  # "model" or "dataset"
    files: Mapping[str, Path]
    entries: dict[str, HubFile] = field(init=False)
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        self.entries = {p: HubFile.load(p, Path(src)) for p, src in sorted(self.files.items())}
        listing = "".join(f"{e.path}\0{e.oid}\n" for e in self.entries.values())
        self.sha = hashlib.sha1(f"{self.repo_type}/{self.repo_id}\n{listing}".encode()).hexdigest()

    @classmethod
    def from_folder(cls, repo_id: str, repo_type: str, folder: Path) -> HubRepo:
        files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
        return cls(repo_id, repo_type, files)

    def folders(self) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in self.entries for i in range(1, p.count("/") + 1)}

    def folder_entry(self, path: str) -> dict:
        return {"type": "directory", "oid": git_blob_id(path.encode()), "size": 0, "path": path}

    def info(self) -> dict:
        return {
            "_id": self.sha[:24],
            "id": self.repo_id,
            "author": self.repo_id.split("/")[0] if "/" in self.repo_id else None,
            "sha": self.sha,
            "lastModified": LAST_MODIFIED,
            "createdAt": LAST_MODIFIED,
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": p} for p in self.entries],
        }


@dataclass
class Logged:
    method: str
    path: str
    status: int
    range: str | None


def _error(status: int, code: str, message: str, commit: str | None = None) -> tuple[int, dict, bytes]:
    headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
    if commit:
        headers["X-Repo-Commit"] = commit
    return status, headers, json.dumps({"error": message}).encode()


class HubServer:
    """The hub for ``repos`` on ``http://127.0.0.1:<port>``; ``log`` lists every request answered."""

    def __init__(self, repos: list[HubRepo], port: int | None = None):
        self.repos = {(r.repo_type, r.repo_id): r for r in repos}
        self.blobs = {e.sha256: e for r in repos for e in r.entries.values() if e.sha256}
        self.port = port or _free_port()
        self.cdn_port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn_port}"
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self._server = None
        self._thread: threading.Thread | None = None
        self._sockets: list[socket.socket] = []

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> HubServer:
        """Serve on two loopback ports: the hub, and the "CDN" that LFS content is redirected to.

        The clients follow a redirect only while it stays on the hub's origin and read an LFS file's
        metadata from the redirect itself, so the content store must be another origin, as on the hub.
        """
        import uvicorn

        sockets = []
        for port in (self.port, self.cdn_port):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sockets.append(sock)
        config = uvicorn.Config(
            self._asgi, log_level="warning", access_log=False, lifespan="off", interface="asgi3"
        )
        self._server = uvicorn.Server(config)
        self._sockets = sockets
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": sockets}, name="local-hub", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "the local hub did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
            for sock in self._sockets:
                sock.close()
            self._server = None

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The hub down for the block (connections refused), then up again on the same port."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the log says -------------------------------------------------------------------------

    def mark(self) -> int:
        """The log position now: ``since(mark)`` lists what came after."""
        with self._lock:
            return len(self.log)

    def since(self, mark: int = 0) -> list[Logged]:
        with self._lock:
            return list(self.log[mark:])

    def downloads(self, mark: int = 0, suffixes: tuple[str, ...] = LFS_SUFFIXES) -> list[Logged]:
        """GETs since ``mark`` that sent file content (200/206) of an LFS-sized file (data, weights)."""
        sent = []
        for r in self.since(mark):
            if r.method != "GET" or r.status not in (200, 206):
                continue
            if r.path.startswith("/lfs/") or ("/resolve/" in r.path and r.path.endswith(suffixes)):
                sent.append(r)
        return sent

    # -- the protocol ------------------------------------------------------------------------------

    async def _asgi(self, scope, receive, send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]  # path is already percent-decoded
        query = parse_qs(scope["query_string"].decode())
        status, out_headers, content = self.handle(method, path, query, headers, body)
        with self._lock:
            self.log.append(Logged(method, path, status, headers.get("range")))
        out_headers.setdefault("Content-Length", str(len(content)))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode(), str(v).encode()) for k, v in out_headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else content})

    def _repo(self, rest: str, repo_type: str) -> tuple[HubRepo | None, str]:
        """The repo whose id ``rest`` starts with (ids are ``name`` or ``org/name``), and what follows."""
        parts = rest.strip("/").split("/")
        for n in (2, 1):
            repo = self.repos.get((repo_type, "/".join(parts[:n])))
            if repo is not None:
                return repo, "/".join(parts[n:])
        return None, ""

    def handle(
        self, method: str, path: str, query: dict, headers: dict, body: bytes
    ) -> tuple[int, dict, bytes]:
        if path.startswith("/lfs/") and method in ("GET", "HEAD"):
            blob = self.blobs.get(path[len("/lfs/") :])
            if blob is None:
                return _error(404, "EntryNotFound", "Entry not found")
            return self._content(blob, headers, {"ETag": f'"{blob.sha256}"'})
        if path.startswith("/api/"):
            kind, _, rest = path[len("/api/") :].partition("/")
            if kind not in ("models", "datasets"):
                return _error(404, "NotFound", "Sorry, we can't find the page you are looking for.")
            repo, tail = self._repo(rest, kind[:-1])
            if repo is None:
                return _error(401, "RepoNotFound", "Repository not found")
            return self._api(repo, method, tail, query, body)
        repo_type, rest = (
            ("dataset", path[len("/datasets/") :]) if path.startswith("/datasets/") else ("model", path)
        )
        parts = rest.strip("/").split("/")
        if "resolve" not in parts[1:3] or method not in ("GET", "HEAD"):
            return _error(404, "NotFound", "Sorry, we can't find the page you are looking for.")
        repo, tail = self._repo(rest, repo_type)
        action, _, tail = tail.partition("/")
        if repo is None or action != "resolve":  # an id the hub does not have (or a private one)
            return _error(401, "RepoNotFound", "Repository not found")
        revision, _, file_path = tail.partition("/")
        if revision not in ("main", repo.sha):
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        entry = repo.entries.get(file_path)
        if entry is None:
            return _error(404, "EntryNotFound", f"{file_path} does not exist on {revision!r}", repo.sha)
        common = {"X-Repo-Commit": repo.sha}
        if entry.sha256:  # the hub sends LFS content from a content-addressed store (a CDN)
            return (
                302,
                {
                    **common,
                    "Location": f"{self.cdn_url}/lfs/{entry.sha256}",
                    "ETag": f'"{entry.oid}"',
                    "X-Linked-Etag": f'"{entry.sha256}"',
                    "X-Linked-Size": str(entry.size),
                },
                b"",
            )
        return self._content(entry, headers, {**common, "ETag": f'"{entry.oid}"'})

    def _content(self, entry: HubFile, headers: dict, extra: dict) -> tuple[int, dict, bytes]:
        out = {
            **extra,
            "Accept-Ranges": "bytes",
            "Content-Type": CONTENT_TYPES.get(Path(entry.path).suffix, "application/octet-stream"),
        }
        spec = headers.get("range", "")
        if spec.startswith("bytes="):
            first, _, last = spec[len("bytes=") :].split(",")[0].partition("-")
            if first:
                start, end = int(first), min(int(last), entry.size - 1) if last else entry.size - 1
            else:
                start, end = max(entry.size - int(last), 0), entry.size - 1
            if start >= entry.size:
                return 416, {**out, "Content-Range": f"bytes */{entry.size}"}, b""
            out["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
            return 206, out, entry.read(start, end)
        return 200, out, entry.read()

    def _api(
        self, repo: HubRepo, method: str, tail: str, query: dict, body: bytes
    ) -> tuple[int, dict, bytes]:
        def found(payload: object) -> tuple[int, dict, bytes]:
            return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()

        action, _, tail = tail.partition("/")
        if action == "" and method == "GET":
            return found(repo.info())
        revision, _, sub = tail.partition("/")
        if action in ("revision", "tree", "paths-info") and revision not in ("main", repo.sha):
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if action == "revision" and method == "GET" and not sub:
            return found(repo.info())
        if action == "tree" and method == "GET":
            return self._tree(repo, sub.strip("/"), query)
        if action == "paths-info" and method == "POST" and not sub:
            form = parse_qs(body.decode())
            folders = repo.folders()
            paths = [unquote(p).strip("/") for p in form.get("paths", [])]
            return found(
                [
                    repo.entries[p].entry() if p in repo.entries else repo.folder_entry(p)
                    for p in paths
                    if p in repo.entries or p in folders
                ]
            )
        return _error(404, "NotFound", "Sorry, we can't find the page you are looking for.")

    def _tree(self, repo: HubRepo, sub: str, query: dict) -> tuple[int, dict, bytes]:
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        folders = repo.folders()
        if sub and sub not in folders:
            return _error(404, "EntryNotFound", f"{sub} does not exist on the repository", repo.sha)
        prefix = f"{sub}/" if sub else ""
        items = []
        for name in sorted(folders | set(repo.entries)):
            if not name.startswith(prefix) or (not recursive and "/" in name[len(prefix) :]):
                continue
            items.append(repo.entries[name].entry() if name in repo.entries else repo.folder_entry(name))
        return 200, {"Content-Type": "application/json"}, json.dumps(items).encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the repos the tests host -----------------------------------------------------------------------

EMOTION_ID = "dair-ai/emotion"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
SPLIT_FILES = {split: f"split/{split}-00000-of-00001.parquet" for split in ("train", "validation", "test")}
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)


def emotion_card(rows: Mapping[str, int], nbytes: Mapping[str, int], labels: list[str]) -> str:
    """``dair-ai/emotion``'s README as on the hub: YAML metadata (``class_label`` names, the ``split``
    config's data files, marked default), then the card text."""
    names = "".join(f"          '{i}': {name}\n" for i, name in enumerate(labels))
    splits = "".join(
        f"  - name: {split}\n    num_bytes: {nbytes[split]}\n    num_examples: {rows[split]}\n"
        for split in rows
    )
    files = "".join(f"  - split: {split}\n    path: split/{split}-*\n" for split in rows)
    return (
        "---\nannotations_creators:\n- machine-generated\nlanguage_creators:\n- machine-generated\n"
        "language:\n- en\nlicense:\n- other\nmultilinguality:\n- monolingual\nsource_datasets:\n- original\n"
        "task_categories:\n- text-classification\ntask_ids:\n- multi-class-classification\n"
        "paperswithcode_id: emotion\npretty_name: Emotion\ntags:\n- emotion-classification\n"
        "dataset_info:\n- config_name: split\n  features:\n  - name: text\n    dtype: string\n"
        "  - name: label\n    dtype:\n      class_label:\n        names:\n"
        f"{names}  splits:\n{splits}"
        f"  download_size: {sum(nbytes.values())}\n  dataset_size: {sum(nbytes.values())}\n"
        f"configs:\n- config_name: split\n  data_files:\n{files}  default: true\n---\n\n"
        '# Dataset Card for "emotion"\n\nEmotion is a dataset of English Twitter messages with six basic '
        "emotions: anger, fear, joy, love, sadness, and surprise (CARER, Saravia et al., EMNLP 2018).\n"
    )


def build_emotion_repo(source: Path, out: Path, labels: list[str], repo_id: str = EMOTION_ID) -> HubRepo:
    """``dair-ai/emotion`` in the hub's layout from a local ``{split}.jsonl`` folder (the shared copy
    or the shipped sample): README card, ``.gitattributes``, ``split/{split}-00000-of-00001.parquet``
    written by ``datasets`` (its features, with the ``ClassLabel``, in the parquet schema metadata)."""
    import datasets

    from emotions_pl.tables import find_split_file, read_split

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=labels)}
    )
    rows, nbytes = {}, {}
    for split, name in SPLIT_FILES.items():
        texts, label_ids = read_split(find_split_file(source, split), labels, split)  # the real validator
        table = datasets.Dataset.from_dict({"text": texts, "label": label_ids}, features=features)
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(str(out / name))
        rows[split], nbytes[split] = len(table), table.data.nbytes
    (out / "README.md").write_text(emotion_card(rows, nbytes, labels))
    (out / ".gitattributes").write_text(GITATTRIBUTES)
    return HubRepo.from_folder(repo_id, "dataset", out)
