"""A loopback fake of the Hugging Face Hub, enough for the real ``huggingface_hub`` client.

It serves one dataset repository from a local folder through the endpoints that
``huggingface_hub`` (2.x) calls for ``snapshot_download``, ``hf_hub_download`` and
``HfApi.list_repo_tree``/``repo_info``:

- ``GET /api/datasets/<repo>[/revision/<rev>]``: repo info (``sha``, ``siblings``);
- ``GET /api/datasets/<repo>/tree/<rev>[/<path>]?recursive=..``: file listing, paginated
  with a ``Link: <...>; rel="next"`` header like the Hub (``page_size`` entries a page);
- ``HEAD``/``GET /datasets/<repo>/resolve/<rev>/<path>``: small ("git") files answer 200
  with ``ETag`` (git blob sha1), ``X-Repo-Commit`` and ``Content-Length``; large ("LFS")
  files answer 302 to a second server on another port (the "CDN", a different origin, so
  the client drops its ``Authorization`` header) with ``X-Linked-Etag`` (sha256),
  ``X-Linked-Size`` and ``X-Repo-Commit``, as the Hub does;
- ``GET /<sha256>`` on the CDN: the file, with ``Range`` support (206 + ``Content-Range``);
- ``POST /api/datasets/<repo>/paths-info/<rev>``: entries of the given paths (what
  :class:`huggingface_hub.HfFileSystem` asks for ``info``);
- uploads (``HfApi.upload_folder``/``create_commit`` without Xet): ``POST /api/repos/create``
  (409 when the repository exists), ``POST /api/datasets/<repo>/preupload/<rev>`` (every file
  is ``regular``, with the ``oid`` of the file already there so unchanged files are skipped)
  and ``POST /api/datasets/<repo>/commit/<rev>`` (ndjson; base64 files are written into the
  served folder, which then is a new commit), and ``POST /api/validate-yaml`` (the card's
  YAML front matter must parse). Every committed path is recorded in :attr:`FakeHub.committed`.

Xet is never advertised (no ``xetHash`` in listings, no ``X-Xet-*`` headers), so the
client takes its plain-HTTP path. Errors carry ``X-Error-Code`` (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``) so the client raises its typed errors.

Switches for tests: :attr:`FakeHub.cut_after` (``{repo path: n}``: the next GET of that
file sends ``n`` bytes and drops the connection, once), :attr:`FakeHub.fail`
(``{repo path: status}``: answer that status to every GET of the file),
:attr:`FakeHub.require_token` (401 without ``Authorization: Bearer <token>`` on Hub
endpoints). Every request is recorded in :attr:`FakeHub.requests`.

It binds 127.0.0.1 only, on ephemeral ports, with daemon threads and socket timeouts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["FakeHub", "HubFile", "RequestRecord"]

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class HubFile:
    """One file of the served repository."""

    path: str
    local: Path
    size: int
    blob_id: str  # git sha1 of the blob as stored in git (the LFS pointer for LFS files)
    sha256: str
    lfs: bool
    pointer_size: int


@dataclass
class RequestRecord:
    """One request the fake hub answered."""

    server: str  # "hub" or "cdn"
    method: str
    path: str  # decoded repo path for resolve/CDN requests, else the URL path
    url: str
    status: int
    authorization: str | None
    range: str | None
    bytes_sent: int = 0


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class FakeHub:
    """A fake Hub serving ``folder`` as the dataset repository ``repo_id``.

    Parameters
    ----------
    folder
        Files to serve; every regular file under it (hidden folders excluded) is a repo file.
    repo_id
        The repository id.
    lfs_min_size
        Files of at least this many bytes are served the LFS way (302 to the CDN).
    page_size
        Entries per page of the tree listing.
    token
        When set with ``require_token``, Hub endpoints answer 401 without this bearer token.
    """

    folder: Path
    repo_id: str = "jiawennnn/STimage-1K4M"
    lfs_min_size: int = 2048
    page_size: int = 1000
    token: str | None = None
    require_token: bool = False
    cut_after: dict[str, int] = field(default_factory=dict)
    fail: dict[str, int] = field(default_factory=dict)
    requests: list[RequestRecord] = field(default_factory=list)
    committed: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.refresh()

    # ------------------------------------------------------------------ content
    def refresh(self) -> None:
        """Re-read the served folder (a new commit when the content changed)."""
        files: dict[str, HubFile] = {}
        for dirpath, dirnames, filenames in os.walk(self.folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                local = Path(dirpath) / name
                rel = local.relative_to(self.folder).as_posix()
                data = local.read_bytes()
                sha256 = hashlib.sha256(data).hexdigest()
                lfs = len(data) >= self.lfs_min_size
                pointer = _lfs_pointer(sha256, len(data))
                files[rel] = HubFile(
                    path=rel,
                    local=local,
                    size=len(data),
                    blob_id=_git_blob_sha1(pointer if lfs else data),
                    sha256=sha256,
                    lfs=lfs,
                    pointer_size=len(pointer),
                )
        self.files = files
        digest = hashlib.sha1()
        for rel in sorted(files):
            digest.update(f"{rel}\0{files[rel].blob_id}\n".encode())
        self.commit = digest.hexdigest()
        self._by_sha256 = {f.sha256: f for f in files.values()}

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        """Base URL of the Hub server (what ``HF_ENDPOINT`` is set to)."""
        host, port = self._servers[0].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def cdn(self) -> str:
        """Base URL of the CDN server (another origin)."""
        host, port = self._servers[1].server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        """Start the Hub and CDN servers on ephemeral loopback ports."""
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self, role))
            server.daemon_threads = True
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop both servers and close their sockets."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for tests
    def record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.requests.append(rec)

    def downloads(self) -> list[str]:
        """Repo paths whose content was sent (GET with a 200/206 answer carrying bytes)."""
        out = []
        for r in self.requests:
            if r.method == "GET" and r.status in (200, 206) and r.bytes_sent and r.server == "cdn":
                out.append(r.path)
            elif (
                r.method == "GET"
                and r.status in (200, 206)
                and r.bytes_sent
                and r.server == "hub"
                and r.url.startswith(f"/datasets/{self.repo_id}/resolve/")
            ):
                out.append(r.path)
        return out

    def bytes_sent(self) -> int:
        """Bytes of file content sent (both servers, every GET answered 200/206)."""
        return sum(r.bytes_sent for r in self.requests if r.method == "GET")

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------------ API payloads
    def repo_info(self, blobs: bool) -> dict:
        siblings = []
        for f in self.files.values():
            s: dict = {"rfilename": f.path}
            if blobs:
                s["size"] = f.size
                s["blobId"] = f.blob_id
                if f.lfs:
                    s["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": f.pointer_size}
            siblings.append(s)
        return {
            "_id": "fake",
            "id": self.repo_id,
            "author": self.repo_id.split("/")[0],
            "sha": self.commit,
            "lastModified": "2025-02-12T00:00:00.000Z",
            "private": False,
            "gated": False,
            "disabled": False,
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "siblings": siblings,
        }

    def tree(self, prefix: str, recursive: bool) -> list[dict]:
        prefix = prefix.strip("/")
        entries: dict[str, dict] = {}
        for f in self.files.values():
            if prefix and not f.path.startswith(prefix + "/"):
                continue
            rest = f.path[len(prefix) + 1 :] if prefix else f.path
            parts = rest.split("/")
            base = prefix + "/" if prefix else ""
            # folders on the way
            for i in range(1, len(parts)):
                if not recursive and i > 1:
                    break
                d = base + "/".join(parts[:i])
                entries.setdefault(
                    d,
                    {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d},
                )
            if not recursive and len(parts) > 1:
                continue
            e = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
            if f.lfs:
                e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            entries[f.path] = e
        return [entries[k] for k in sorted(entries)]


_API_RE = re.compile(r"^/api/datasets/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?/?$")
_TREE_RE = re.compile(r"^/api/datasets/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_PATHS_INFO_RE = re.compile(r"^/api/datasets/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)$")
_PREUPLOAD_RE = re.compile(r"^/api/datasets/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)$")
_COMMIT_RE = re.compile(r"^/api/datasets/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)$")
_RESOLVE_RE = re.compile(r"^/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def _make_handler(hub: FakeHub, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeHub/1.0"
        timeout = 20  # seconds of socket inactivity before the connection is dropped

        def log_message(self, format, *args):  # silence stderr logging
            return

        def setup(self):
            super().setup()
            # headers and body go in separate writes: without this, delayed ACKs stall each
            # keep-alive request by ~40 ms
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        # ---------------------------------------------------------- plumbing
        def _rec(self, status: int, path: str, sent: int = 0) -> None:
            hub.record(
                RequestRecord(
                    server=role,
                    method=self.command,
                    path=path,
                    url=self.path,
                    status=status,
                    authorization=self.headers.get("Authorization"),
                    range=self.headers.get("Range"),
                    bytes_sent=sent,
                )
            )

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, path: str = "") -> None:
            self.send_response(status)
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            hdrs.setdefault("Content-Length", str(len(body)))
            for k, v in hdrs.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)
            self._rec(status, path or urlsplit(self.path).path, len(body) if self.command != "HEAD" else 0)

        def _error(self, status: int, code: str | None, message: str, path: str = "") -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            if role == "hub":
                headers["X-Repo-Commit"] = hub.commit
            self._send(status, json.dumps({"error": message}).encode(), headers, path)

        def _authorized(self) -> bool:
            if role != "hub" or not hub.require_token:
                return True
            return self.headers.get("Authorization") == f"Bearer {hub.token}"

        # ---------------------------------------------------------- verbs
        def do_HEAD(self):
            self._dispatch()

        def do_GET(self):
            self._dispatch()

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            url = urlsplit(self.path)
            if role != "hub":
                return self._error(404, None, "not implemented by the fake hub")
            if not self._authorized():
                return self._error(401, "RepoNotFound", "Invalid credentials in Authorization header")
            if url.path == "/api/repos/create":
                data = json.loads(body or b"{}")
                rid = f"{data.get('organization') or ''}/{data.get('name')}".strip("/")
                if rid == hub.repo_id:
                    body = {"error": "You already created this dataset repo", "url": f"{hub.endpoint}/datasets/{rid}"}
                    return self._send(409, json.dumps(body).encode(), {"X-Error-Message": body["error"]})
                return self._error(403, None, "the fake hub serves one repository only")
            if url.path == "/api/validate-yaml":
                # README metadata check: the YAML front matter must parse (the Hub checks more)
                import yaml

                content = json.loads(body or b"{}").get("content", "")
                errors = []
                if content.startswith("---"):
                    try:
                        yaml.safe_load(content.split("---", 2)[1])
                    except yaml.YAMLError as e:
                        errors.append({"message": str(e)})
                return self._send(400 if errors else 200, json.dumps({"errors": errors, "warnings": []}).encode())
            if m := _PATHS_INFO_RE.match(url.path):
                return self._paths_info(m, body)
            if m := _PREUPLOAD_RE.match(url.path):
                return self._preupload(m, body)
            if m := _COMMIT_RE.match(url.path):
                return self._commit(m, body)
            self._error(404, None, "not implemented by the fake hub")

        def _paths_info(self, m: re.Match, body: bytes) -> None:
            if not self._check_repo(m["repo"], m["rev"]):
                return
            ctype = self.headers.get("Content-Type", "")
            if "json" in ctype:
                paths = json.loads(body or b"{}").get("paths", [])
            else:
                paths = parse_qs(body.decode()).get("paths", [])
            out = []
            for p in paths:
                p = p.strip("/")
                f = hub.files.get(p)
                if f is not None:
                    e = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
                    if f.lfs:
                        e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
                    out.append(e)
                elif any(q.startswith(p + "/") for q in hub.files):
                    out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0, "path": p})
            self._send(200, json.dumps(out).encode())

        def _preupload(self, m: re.Match, body: bytes) -> None:
            if not self._check_repo(m["repo"], m["rev"]):
                return
            files = json.loads(body or b"{}").get("files", [])
            out = []
            for f in files:
                have = hub.files.get(f["path"])
                out.append({
                    "path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                    "oid": None if have is None or have.lfs else have.blob_id,
                })
            self._send(200, json.dumps({"files": out, "commitOid": hub.commit}).encode())

        def _commit(self, m: re.Match, body: bytes) -> None:
            import base64

            if not self._check_repo(m["repo"], m["rev"]):
                return
            written = []
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if item["key"] == "file":
                    v = item["value"]
                    dest = hub.folder / v["path"]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(base64.b64decode(v["content"]))
                    written.append(v["path"])
                elif item["key"] in ("lfsFile",):
                    return self._error(400, None, "LFS/Xet uploads are not implemented by the fake hub")
            with hub._lock:
                hub.refresh()
                hub.committed.append(written)
            payload = {
                "commitUrl": f"{hub.endpoint}/datasets/{hub.repo_id}/commit/{hub.commit}",
                "commitOid": hub.commit,
                "pullRequestUrl": None,
            }
            self._send(200, json.dumps(payload).encode())

        def _dispatch(self) -> None:
            url = urlsplit(self.path)
            if role == "cdn":
                return self._cdn(url)
            if not self._authorized():
                # what the Hub answers for a private repository without valid credentials
                return self._error(401, "RepoNotFound", "Invalid credentials in Authorization header")
            path = unquote(url.path)
            query = parse_qs(url.query)
            if m := _TREE_RE.match(url.path):
                return self._tree(m, query)
            if m := _API_RE.match(url.path):
                return self._info(m, query)
            if m := _RESOLVE_RE.match(url.path):
                return self._resolve(m)
            return self._error(404, None, f"no route for {path}")

        def _check_repo(self, repo: str, rev: str | None) -> bool:
            if unquote(repo) != hub.repo_id:
                self._error(404, "RepoNotFound", "Repository not found")
                return False
            if rev is not None and unquote(rev) not in ("main", hub.commit):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev)}")
                return False
            return True

        def _info(self, m: re.Match, query: dict) -> None:
            if not self._check_repo(m["repo"], m["rev"]):
                return
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            self._send(200, json.dumps(hub.repo_info(blobs)).encode())

        def _tree(self, m: re.Match, query: dict) -> None:
            if not self._check_repo(m["repo"], m["rev"]):
                return
            prefix = unquote(m["path"] or "")
            if prefix and not any(p.startswith(prefix.strip("/") + "/") for p in hub.files):
                return self._error(404, "EntryNotFound", f"{prefix} does not exist")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            entries = hub.tree(prefix, recursive)
            start = int(query.get("cursor", ["0"])[0])
            page = entries[start : start + hub.page_size]
            headers = {}
            if start + hub.page_size < len(entries):
                nxt = dict(query)
                nxt["cursor"] = [str(start + hub.page_size)]
                qs = "&".join(f"{k}={quote(v[0])}" for k, v in nxt.items())
                headers["Link"] = f'<{hub.endpoint}{urlsplit(self.path).path}?{qs}>; rel="next"'
            self._send(200, json.dumps(page).encode(), headers)

        def _resolve(self, m: re.Match) -> None:
            if not self._check_repo(m["repo"], m["rev"]):
                return
            rel = unquote(m["path"])
            f = hub.files.get(rel)
            if f is None:
                return self._error(404, "EntryNotFound", f"{rel} does not exist on main", path=rel)
            common = {"X-Repo-Commit": hub.commit, "Accept-Ranges": "bytes"}
            if f.lfs:
                headers = {
                    **common,
                    "ETag": f'"{f.blob_id}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                    "Location": f"{hub.cdn}/{f.sha256}?X-Amz-Signature=fake",
                    "Content-Type": "text/plain",
                }
                return self._send(302, b"", headers, path=rel)
            headers = {**common, "ETag": f'"{f.blob_id}"', "Content-Type": "application/octet-stream"}
            return self._content(f, headers)

        def _cdn(self, url) -> None:
            sha = url.path.strip("/")
            f = hub._by_sha256.get(sha)
            if f is None:
                return self._error(404, None, "no such object")
            self._content(f, {"ETag": f'"{f.sha256}"', "Content-Type": "application/octet-stream"})

        def _content(self, f: HubFile, headers: dict) -> None:
            status = hub.fail.get(f.path)
            if status is not None and self.command == "GET":
                return self._error(status, None, "injected failure", path=f.path)
            start, end = 0, f.size - 1
            status = 200
            rng = self.headers.get("Range")
            if rng:
                mm = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                if not mm or int(mm[1]) >= f.size:
                    return self._send(
                        416, b"", {**headers, "Content-Range": f"bytes */{f.size}"}, path=f.path
                    )
                start = int(mm[1])
                end = min(int(mm[2]), f.size - 1) if mm[2] else f.size - 1
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{end}/{f.size}"}
            length = end - start + 1
            self.send_response(status)
            for k, v in {**headers, "Content-Length": str(length)}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command == "HEAD":
                self._rec(status, f.path)
                return
            limit = None
            with hub._lock:
                if f.path in hub.cut_after:
                    limit = hub.cut_after.pop(f.path)
            sent = 0
            with open(f.local, "rb") as fh:
                fh.seek(start)
                remaining = length if limit is None else min(length, limit)
                while remaining > 0:
                    chunk = fh.read(min(_CHUNK, remaining))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    remaining -= len(chunk)
            self._rec(status, f.path, sent)
            if limit is not None and sent < length:
                # drop the connection mid-body, as a network cut would
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    return Handler
