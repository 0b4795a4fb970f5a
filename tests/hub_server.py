"""A small, honest stand-in for the Hugging Face Hub, for publishing tests without the internet.

No off-the-shelf server accepts uploads (olah is read-only, KohakuHub needs docker), so this one implements the
subset of the Hub HTTP API that the real ``huggingface_hub`` client (0.36 / 1.x / 2.x) calls to
create a repo, commit files, branch, tag, list and download:

=====================  ====================================================================
create / delete repo   ``POST /api/repos/create``, ``DELETE /api/repos/delete``
README check           ``POST /api/validate-yaml`` (parses the front matter when PyYAML is there)
preupload              ``POST /api/{type}s/{repo}/preupload/{rev}`` -> every file "regular"; with
                       ``HubServer(lfs=True)`` ``*.safetensors`` are "lfs", as on the Hub (the
                       client then needs ``HF_HUB_DISABLE_XET``: no Xet server here); ``oid`` of the
                       current blob so the client skips unchanged files
LFS                    ``POST /{repo}.git/info/lfs/objects/batch`` (basic transfer), ``PUT
                       /lfs-upload/{sha256}``; ``lfsFile`` commit lines; downloads of LFS files
                       answer 302 to ``/lfs-objects/{sha256}`` with X-Linked-Etag / X-Linked-Size
commit                 ``POST /api/{type}s/{repo}/commit/{rev}[?create_pr=1]`` (ndjson: header,
                       file, deletedFile, deletedFolder; ``parentCommit`` checked)
repo info              ``GET /api/{type}s/{repo}[/revision/{rev}]`` -> id, sha, siblings
tree / paths-info      ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive=``,
                       ``POST /api/{type}s/{repo}/paths-info/{rev}``
refs / branch / tag    ``GET .../refs``, ``POST|DELETE .../branch/{name}``, ``POST|DELETE .../tag/{rev}``
commits                ``GET /api/{type}s/{repo}/commits/{rev}``
download               ``HEAD|GET /[{type}s/]{repo}/resolve/{rev}/{path}`` with X-Repo-Commit,
                       quoted ETag (git blob sha1), Content-Length, Range; 404 with X-Error-Code
                       RepoNotFound / RevisionNotFound / EntryNotFound
whoami                 ``GET /api/whoami-v2``
=====================  ====================================================================

Every commit stores the full file set of its revision; a revision is a branch, a tag, a full
commit sha or ``refs/pr/N``. Write calls need an ``Authorization`` header, as on the Hub. Every
request is appended to ``server.log`` as ``(method, path)`` so tests can check what was (and was
not) downloaded.

>>> with HubServer() as hub:  # doctest: +SKIP
...     HfApi(endpoint=hub.url, token="hf_test").create_repo("org/name")
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    message: str
    parents: list[str]
    date: str
    lfs: set[str] = field(default_factory=set)  # paths stored as LFS objects


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: int = 0

    def resolve(self, rev: str) -> Commit | None:
        sha = self.branches.get(rev) or self.tags.get(rev)
        if sha is None and rev in self.commits:
            sha = rev
        return self.commits.get(sha) if sha else None


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, body: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body


class HubState:
    """All repos, guarded by one lock."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> bytes
        self.lock = threading.Lock()
        self._counter = 0

    def new_commit(self, repo: Repo, files: dict[str, bytes], message: str, parents: list[str]) -> Commit:
        self._counter += 1
        digest = hashlib.sha1()
        for p in parents:
            digest.update(p.encode())
        digest.update(message.encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_sha1(files[path]).encode())
        digest.update(str(self._counter).encode())
        date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        commit = Commit(digest.hexdigest(), dict(files), message, parents, date)
        repo.commits[commit.sha] = commit
        return commit


class HubServer:
    """``ThreadingHTTPServer`` on 127.0.0.1 (random port) in a daemon thread; a context manager."""

    def __init__(self, user: str = "tester", *, lfs: bool = False) -> None:
        self.state = HubState()
        self.user = user
        self.lfs = lfs
        self.log: list[tuple[str, str]] = []
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # LFS objects are served from another host, as the Hub's CDN: the client does not follow the
        # redirect there with its HEAD request and reads the file's metadata from the redirect itself.
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.cdn.daemon_threads = True
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"
        self.threads = [
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=name, daemon=True)
            for server, name in ((self.httpd, "hub-server"), (self.cdn, "hub-cdn"))
        ]

    def start(self) -> HubServer:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        for server, thread in zip((self.httpd, self.cdn), self.threads, strict=True):
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of a revision, as the server stores them (for assertions)."""
        with self.state.lock:
            commit = self.state.repos[(repo_type, repo_id)].resolve(revision)
            assert commit is not None, revision
            return dict(commit.files)

    def downloaded(self) -> list[str]:
        """Paths of every file GET from ``/resolve/`` (LFS files: the 302 that precedes the object's GET)."""
        return [p.split("/resolve/", 1)[1] for m, p in self.log if m == "GET" and "/resolve/" in p]

    def lfs_paths(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> set[str]:
        """The paths of a revision stored as LFS objects."""
        with self.state.lock:
            commit = self.state.repos[(repo_type, repo_id)].resolve(revision)
            assert commit is not None, revision
            return set(commit.lfs)


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # ---------------------------------------------------------------------------------------- plumbing

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.hub.log.append((method, split.path))
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.segments = [unquote(s) for s in split.path.split("/")[1:]]
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        try:
            with self.hub.state.lock:
                status, headers, payload = self._route(method)
        except HttpError as e:
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            body = e.body or {"error": e.message}
            status, payload = e.status, json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _json(self, obj: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()

    def _auth(self) -> None:
        if not (self.headers.get("Authorization") or "").startswith("Bearer "):
            raise HttpError(401, "Invalid credentials in Authorization header")

    def _body_json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HttpError(400, "request body is not JSON") from None

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.hub.state.repos.get((repo_type, repo_id))
        if repo is None:
            raise HttpError(404, f"Repository Not Found for url: {self.path}.", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _repo_url(self, repo: Repo) -> str:
        prefix = "" if repo.repo_type == "model" else f"/{repo.repo_type}s"
        return f"{self.hub.url}{prefix}/{repo.repo_id}"

    @staticmethod
    def _split_rev(rest: list[str]) -> tuple[str, list[str]]:
        """``refs/pr/1`` may arrive quoted (one segment) or not (three)."""
        if len(rest) >= 3 and rest[0] == "refs" and rest[1] in ("pr", "convert"):
            return "/".join(rest[:3]), rest[3:]
        return rest[0], rest[1:]

    # ------------------------------------------------------------------------------------------ routes

    def _route(self, method: str) -> tuple[int, dict[str, str], bytes]:
        s = self.segments
        if s[:1] == ["api"]:
            return self._api(method, s[1:])
        # downloads: /{ns}/{name}/resolve/{rev}/{path} or /{type}s/{ns}/{name}/resolve/...
        if s[:1] == ["lfs-upload"] and method == "PUT":
            return self._lfs_upload(s[1])
        if s[:1] == ["lfs-objects"] and method in ("GET", "HEAD"):
            if s[1] not in self.hub.state.lfs_objects:
                raise HttpError(404, f"no LFS object {s[1]}", "EntryNotFound")
            return self._bytes(self.hub.state.lfs_objects[s[1]], {}, method)
        repo_type = "model"
        if s and s[0] in ("datasets", "spaces"):
            repo_type, s = REPO_TYPES[s[0]], s[1:]
        if s[-4:] == ["info", "lfs", "objects", "batch"] and len(s) == 6 and method == "POST":
            self._auth()
            return self._lfs_batch(self._repo(repo_type, f"{s[0]}/{s[1].removesuffix('.git')}"))
        if len(s) >= 5 and s[2] == "resolve" and method in ("GET", "HEAD"):
            repo = self._repo(repo_type, f"{s[0]}/{s[1]}")
            rev, path_parts = self._split_rev(s[3:])
            return self._resolve(repo, rev, "/".join(path_parts), method)
        raise HttpError(404, f"no route for {method} {self.path}")

    def _api(self, method: str, s: list[str]) -> tuple[int, dict[str, str], bytes]:
        if s == ["whoami-v2"] and method == "GET":
            self._auth()
            return self._json({"type": "user", "name": self.hub.user, "orgs": [], "auth": {"type": "access_token"}})
        if s == ["validate-yaml"] and method == "POST":
            return self._json(self._validate_yaml())
        if s == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if s == ["repos", "delete"] and method == "DELETE":
            self._auth()
            body = self._body_json()
            repo_id = f"{body.get('organization') or self.hub.user}/{body['name']}"
            key = (body.get("type") or "model", repo_id)
            self._repo(*key)
            del self.hub.state.repos[key]
            return self._json({})
        if len(s) >= 3 and s[0] in REPO_TYPES:
            repo = self._repo(REPO_TYPES[s[0]], f"{s[1]}/{s[2]}")
            return self._repo_api(method, repo, s[3:])
        raise HttpError(404, f"no route for {method} {self.path}")

    def _repo_api(self, method: str, repo: Repo, s: list[str]) -> tuple[int, dict[str, str], bytes]:
        if not s and method == "GET":
            return self._json(self._info(repo, self._commit(repo, "main")))
        if s[:1] == ["revision"] and method == "GET":
            rev, _ = self._split_rev(s[1:])
            return self._json(self._info(repo, self._commit(repo, rev)))
        if s[:1] == ["tree"] and method == "GET":
            rev, path_parts = self._split_rev(s[1:])
            commit = self._commit(repo, rev)
            recursive = self.query.get("recursive", "false").lower() in ("1", "true")
            return self._json(self._tree(commit, "/".join(path_parts), recursive))
        if s[:1] == ["paths-info"] and method == "POST":
            rev, _ = self._split_rev(s[1:])
            return self._json(self._paths_info(self._commit(repo, rev)))
        if s == ["refs"] and method == "GET":
            return self._json(self._refs(repo))
        if s[:1] == ["commits"] and method == "GET":
            rev, _ = self._split_rev(s[1:])
            return self._json(self._history(repo, self._commit(repo, rev)))
        if s[:1] == ["preupload"] and method == "POST":
            self._auth()
            rev, _ = self._split_rev(s[1:])
            return self._json(self._preupload(repo, rev))
        if s[:1] == ["commit"] and method == "POST":
            self._auth()
            rev, _ = self._split_rev(s[1:])
            return self._json(self._do_commit(repo, rev))
        if s[:1] == ["branch"] and method in ("POST", "DELETE"):
            self._auth()
            branch, _ = self._split_rev(s[1:])
            return self._json(self._branch(repo, branch, method))
        if s[:1] == ["tag"] and method in ("POST", "DELETE"):
            self._auth()
            rev, _ = self._split_rev(s[1:])
            return self._json(self._tag(repo, rev, method))
        raise HttpError(404, f"no route for {method} {self.path}")

    # ----------------------------------------------------------------------------------------- actions

    def _validate_yaml(self) -> dict[str, Any]:
        content = str(self._body_json().get("content", ""))
        errors: list[dict[str, str]] = []
        if content.startswith("---"):
            front = content.split("---", 2)
            if len(front) < 3:
                errors.append({"message": "metadata block is not closed with ---"})
            else:
                try:
                    import yaml
                except ImportError:  # pragma: no cover - PyYAML ships with huggingface_hub's deps here
                    yaml = None
                if yaml is not None:
                    try:
                        meta = yaml.safe_load(front[1])
                        if meta is not None and not isinstance(meta, dict):
                            errors.append({"message": "metadata must be a YAML mapping"})
                    except yaml.YAMLError as e:
                        errors.append({"message": f"invalid YAML: {e}"})
        if errors:
            raise HttpError(400, errors[0]["message"], body={"errors": errors, "warnings": []})
        return {"errors": [], "warnings": []}

    def _create_repo(self) -> tuple[int, dict[str, str], bytes]:
        self._auth()
        body = self._body_json()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self.hub.user}/{body['name']}"
        key = (repo_type, repo_id)
        if key in self.hub.state.repos:
            url = self._repo_url(self.hub.state.repos[key])
            raise HttpError(409, "You already created this model repo", body={"error": "conflict", "url": url})
        private = body.get("private") or body.get("visibility") == "private"
        repo = Repo(repo_type, repo_id, bool(private))
        first = self.hub.state.new_commit(repo, {".gitattributes": GITATTRIBUTES}, "initial commit", [])
        repo.branches["main"] = first.sha
        self.hub.state.repos[key] = repo
        return self._json({"url": self._repo_url(repo), "name": repo_id})

    def _info(self, repo: Repo, commit: Commit) -> dict[str, Any]:
        return {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": commit.date,
            "createdAt": repo.commits[min(repo.commits, key=lambda c: repo.commits[c].date)].date,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }

    @staticmethod
    def _file_entry(path: str, data: bytes) -> dict[str, Any]:
        return {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}

    def _tree(self, commit: Commit, prefix: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = prefix.strip("/")
        base = f"{prefix}/" if prefix else ""
        if prefix and not any(p.startswith(base) for p in commit.files):
            raise HttpError(404, f"path {prefix} not found in {commit.sha}", "EntryNotFound")
        out: dict[str, dict[str, Any]] = {}
        for path, data in sorted(commit.files.items()):
            if not path.startswith(base):
                continue
            rest = path[len(base) :]
            parts = rest.split("/")
            for i in range(1, len(parts)):  # folders on the way
                if not recursive and i > 1:
                    break
                folder = base + "/".join(parts[:i])
                out.setdefault(
                    folder, {"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest()}
                )
            if recursive or len(parts) == 1:
                out[path] = self._file_entry(path, data)
        return list(out.values())

    def _paths_info(self, commit: Commit) -> list[dict[str, Any]]:
        body = self.body.decode()
        try:
            paths = json.loads(body)["paths"]
        except ValueError:
            paths = parse_qs(body).get("paths", [])
        out = []
        for p in paths:
            if p in commit.files:
                out.append(self._file_entry(p, commit.files[p]))
            elif any(f.startswith(p.rstrip("/") + "/") for f in commit.files):
                out.append({"type": "directory", "path": p, "oid": hashlib.sha1(p.encode()).hexdigest()})
        return out

    def _refs(self, repo: Repo) -> dict[str, Any]:
        def ref(kind: str, name: str, sha: str) -> dict[str, str]:
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": sha}

        return {
            "branches": [ref("heads", n, sha) for n, sha in sorted(repo.branches.items()) if not n.startswith("refs/")],
            "tags": [ref("tags", n, sha) for n, sha in sorted(repo.tags.items())],
            "converts": [],
            "pullRequests": [
                {"name": n, "ref": n, "targetCommit": sha}
                for n, sha in sorted(repo.branches.items())
                if n.startswith("refs/pr/")
            ],
        }

    def _history(self, repo: Repo, commit: Commit) -> list[dict[str, Any]]:
        out = []
        current: Commit | None = commit
        while current is not None:
            out.append(
                {
                    "id": current.sha,
                    "authors": [{"user": self.hub.user}],
                    "date": current.date,
                    "title": current.message,
                    "message": "",
                }
            )
            current = repo.commits.get(current.parents[0]) if current.parents else None
        return out

    def _preupload(self, repo: Repo, rev: str) -> dict[str, Any]:
        commit = repo.resolve(rev)
        if commit is None and rev not in repo.branches:
            raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = []
        for f in self._body_json().get("files", []):
            mode = "lfs" if self.hub.lfs and f["path"].endswith(".safetensors") else "regular"
            entry: dict[str, Any] = {"path": f["path"], "uploadMode": mode, "shouldIgnore": False}
            if commit is not None and f["path"] in commit.files:
                entry["oid"] = git_blob_sha1(commit.files[f["path"]])
            files.append(entry)
        return {"files": files}

    def _do_commit(self, repo: Repo, rev: str) -> dict[str, Any]:
        state = self.hub.state
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HttpError(400, "the first ndjson line must be the header")
        header = lines[0]["value"]
        create_pr = self.query.get("create_pr") in ("1", "true", "True")
        base = repo.resolve(rev)
        if base is None or (rev not in repo.branches and not create_pr):
            raise HttpError(404, f"Invalid rev id: {rev} (commits go to a branch)", "RevisionNotFound")
        parent = header.get("parentCommit")
        if parent is not None and parent != base.sha:
            raise HttpError(412, f"parentCommit {parent} is not the head of {rev} ({base.sha})")
        files, lfs = dict(base.files), set(base.lfs)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = value.get("path", "")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HttpError(400, f"unsupported encoding {value.get('encoding')!r} for {path}")
                files[path] = base64.b64decode(value["content"])
                lfs.discard(path)
            elif key == "deletedFile":
                if path not in files:
                    raise HttpError(404, f"cannot delete {path}: no such file", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
            elif key == "lfsFile":
                data = state.lfs_objects.get(value.get("oid", ""))
                if data is None or value.get("algo") != "sha256":
                    raise HttpError(400, f"LFS object {value.get('oid')} of {path} was never uploaded")
                files[path] = data
                lfs.add(path)
            else:
                raise HttpError(400, f"unknown commit operation {key!r}")
        message = str(header.get("summary") or "")
        commit = state.new_commit(repo, files, message, [base.sha])
        commit.lfs = {p for p in lfs if p in files}
        pr_url = None
        if create_pr:
            repo.prs += 1
            repo.branches[f"refs/pr/{repo.prs}"] = commit.sha
            pr_url = f"{self._repo_url(repo)}/discussions/{repo.prs}"
        else:
            repo.branches[rev] = commit.sha
        return {
            "commitOid": commit.sha,
            "commitUrl": f"{self._repo_url(repo)}/commit/{commit.sha}",
            "pullRequestUrl": pr_url,
        }

    def _branch(self, repo: Repo, branch: str, method: str) -> dict[str, Any]:
        if method == "DELETE":
            if branch not in repo.branches or branch == "main":
                raise HttpError(404 if branch not in repo.branches else 403, f"cannot delete branch {branch}")
            del repo.branches[branch]
            return {}
        if branch in repo.branches or branch in repo.tags:
            raise HttpError(409, f"Reference already exists: {branch}")
        start = self._body_json().get("startingPoint") or "main"
        repo.branches[branch] = self._commit(repo, start).sha
        return {}

    def _tag(self, repo: Repo, rev: str, method: str) -> dict[str, Any]:
        if method == "DELETE":
            if rev not in repo.tags:
                raise HttpError(404, f"no tag {rev}", "RevisionNotFound")
            del repo.tags[rev]
            return {}
        name = self._body_json().get("tag")
        if not name:
            raise HttpError(400, "missing 'tag'")
        if name in repo.tags or name in repo.branches:
            raise HttpError(409, f"Tag reference {name} already exists")
        repo.tags[name] = self._commit(repo, rev).sha
        return {}

    def _resolve(self, repo: Repo, rev: str, path: str, method: str) -> tuple[int, dict[str, str], bytes]:
        commit = self._commit(repo, rev)
        if path not in commit.files:
            raise HttpError(404, f"Entry not found: {path}", "EntryNotFound")
        data = commit.files[path]
        if path in commit.lfs:  # as the Hub: a redirect to the object store, the metadata in X-Linked-*
            oid = hashlib.sha256(data).hexdigest()
            headers = {
                "X-Repo-Commit": commit.sha,
                "X-Linked-Etag": f'"{oid}"',
                "X-Linked-Size": str(len(data)),
                "ETag": f'"{oid}"',
                "Location": f"{self.hub.cdn_url}/lfs-objects/{oid}",
            }
            return 302, headers, b""
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{git_blob_sha1(data)}"'}
        return self._bytes(data, headers, method)

    def _bytes(self, data: bytes, headers: dict[str, str], method: str) -> tuple[int, dict[str, str], bytes]:
        headers = {
            **headers,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
        }
        status = 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and method == "GET":
            start_s, _, end_s = rng[6:].partition("-")
            start, end = int(start_s or 0), int(end_s) if end_s else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        headers["Content-Length"] = str(len(data))
        return status, headers, data

    def _lfs_batch(self, repo: Repo) -> tuple[int, dict[str, str], bytes]:
        body = self._body_json()
        if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
            raise HttpError(400, "this test Hub takes basic LFS uploads only")
        objects = []
        for obj in body.get("objects", []):
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.state.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        return (
            200,
            {"Content-Type": "application/vnd.git-lfs+json"},
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
        )

    def _lfs_upload(self, oid: str) -> tuple[int, dict[str, str], bytes]:
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HttpError(400, f"the uploaded bytes do not hash to {oid}")
        self.hub.state.lfs_objects[oid] = self.body
        return 200, {}, b""


@contextmanager
def local_hub(monkeypatch: Any, home: Path) -> Iterator[HubServer]:
    """A running :class:`HubServer` that ``huggingface_hub`` talks to: a private ``HF_HOME`` under
    ``home`` with a token, telemetry and progress bars off, online, and the client's constants
    (read once at its import: endpoint, download URL template, cache, offline flag) pointed at it.
    ``monkeypatch`` undoes the settings at the test's end."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(home / "hf_home"))
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hf_home" / "hub"))
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        yield server
