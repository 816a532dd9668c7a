"""A fake of GitHub's REST API on loopback (a real HTTP server in a thread) for the action's tests:
issue comments, issues, the pull requests of a commit, opening and listing pull requests, GET /user. It records every request
(method, path, query, headers, body) and enforces what GitHub enforces that matters here: a
comment or issue body of at most 65,536 characters, the token, and that only a comment's author
may edit it."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LIMIT = 65_536


@dataclass
class FakeGitHub:
    token: str
    login: str = "github-actions[bot]"  # who the token posts as
    user_readable: bool = False  # GET /user: 403 for GITHUB_TOKEN, 200 for a personal token
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # issue number -> comments
    issues: list[dict[str, Any]] = field(default_factory=list)
    pulls_by_commit: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    pulls: list[dict[str, Any]] = field(default_factory=list)  # pull requests opened through the API
    requests: list[dict[str, Any]] = field(default_factory=list)
    _next_id: int = 1000
    url: str = ""

    def add_comment(self, number: int, body: str, login: str) -> dict[str, Any]:
        self._next_id += 1
        comment = {"id": self._next_id, "body": body, "user": {"login": login}}
        self.comments.setdefault(number, []).append(comment)
        return comment

    def bodies(self) -> list[str]:
        """Every request body the fake received (for the secret scan)."""
        return [r["body"] for r in self.requests if r["body"]]

    # --- the API ---------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:
        if m := re.fullmatch(r"/repos/[^/]+/[^/]+/issues/(\d+)/comments", path):
            number = int(m.group(1))
            if method == "GET":
                return self._page(self.comments.get(number, []), query, path)
            if method == "POST":
                if len(body.get("body", "")) > LIMIT:
                    return 422, {"message": "Validation Failed"}, {}
                return 201, self.add_comment(number, body["body"], self.login), {}
        if (m := re.fullmatch(r"/repos/[^/]+/[^/]+/issues/comments/(\d+)", path)) and method == "PATCH":
            for comment in (c for cs in self.comments.values() for c in cs):
                if comment["id"] == int(m.group(1)):
                    if comment["user"]["login"] != self.login:
                        return 403, {"message": "Must have admin rights"}, {}
                    if len(body.get("body", "")) > LIMIT:
                        return 422, {"message": "Validation Failed"}, {}
                    comment["body"] = body["body"]
                    return 200, comment, {}
            return 404, {"message": "Not Found"}, {}
        if m := re.fullmatch(r"/repos/[^/]+/[^/]+/commits/([0-9a-f]+)/pulls", path):
            return 200, self.pulls_by_commit.get(m.group(1), []), {}
        if re.fullmatch(r"/repos/[^/]+/[^/]+/issues", path):
            if method == "GET":
                creator = query.get("creator", [None])[0]
                found = [i for i in self.issues if creator is None or i["user"]["login"] == creator]
                return self._page(found, query, path)
            if method == "POST":
                if len(body.get("body", "")) > LIMIT:
                    return 422, {"message": "Validation Failed"}, {}
                self._next_id += 1
                issue = {
                    "number": self._next_id,
                    "title": body["title"],
                    "body": body["body"],
                    "labels": body.get("labels", []),
                    "state": "open",
                    "user": {"login": self.login},
                }
                self.issues.append(issue)
                return 201, issue, {}
        if (m := re.fullmatch(r"/repos/[^/]+/[^/]+/issues/(\d+)", path)) and method == "PATCH":
            for issue in self.issues:
                if issue["number"] == int(m.group(1)):
                    if len(body.get("body", "")) > LIMIT:
                        return 422, {"message": "Validation Failed"}, {}
                    issue.update({k: v for k, v in body.items() if k in ("body", "state", "title")})
                    return 200, issue, {}
            return 404, {"message": "Not Found"}, {}
        if re.fullmatch(r"/repos/[^/]+/[^/]+/pulls", path):
            if method == "GET":
                head = query.get("head", [None])[0]
                state = query.get("state", ["open"])[0]
                found = [
                    p
                    for p in self.pulls
                    if (head is None or f"acme:{p['head']['ref']}" == head) and state in (p["state"], "all")
                ]
                return self._page(found, query, path)
            if method == "POST":
                if any(p["head"]["ref"] == body["head"] and p["state"] == "open" for p in self.pulls):
                    return 422, {"message": "Validation Failed"}, {}  # GitHub: a pull request already exists
                self._next_id += 1
                pull = {
                    "number": self._next_id,
                    "title": body["title"],
                    "body": body["body"],
                    "state": "open",
                    "head": {"ref": body["head"]},
                    "base": {"ref": body["base"]},
                    "user": {"login": self.login},
                }
                self.pulls.append(pull)
                return 201, pull, {}
        if path == "/user" and method == "GET":
            if not self.user_readable:
                return 403, {"message": "Resource not accessible by integration"}, {}
            return 200, {"login": self.login}, {}
        return 404, {"message": "Not Found"}, {}

    def _page(
        self, items: list[dict[str, Any]], query: dict[str, list[str]], path: str
    ) -> tuple[int, Any, dict[str, str]]:
        per = min(int(query.get("per_page", ["30"])[0]), 100)
        page = int(query.get("page", ["1"])[0])
        chunk = items[(page - 1) * per : page * per]
        headers = {}
        if page * per < len(items):
            rest = "&".join(f"{k}={v[0]}" for k, v in query.items() if k != "page")
            headers["Link"] = f'<{self.url}{path}?{rest}&page={page + 1}>; rel="next"'
        return 200, chunk, headers


def serve(fake: FakeGitHub) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _go(self) -> None:
            parts = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            fake.requests.append(
                {
                    "method": self.command,
                    "path": parts.path,
                    "query": parts.query,
                    "headers": dict(self.headers),
                    "body": raw,
                }
            )
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                status, answer, headers = 401, {"message": "Bad credentials"}, {}
            else:
                status, answer, headers = fake.handle(
                    self.command, parts.path, parse_qs(parts.query), json.loads(raw) if raw else {}
                )
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = _go

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
