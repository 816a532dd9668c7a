"""A small client of GitHub's REST API: the calls the action makes (comments, issues, the pull
requests of a commit), over httpx, with the token from the environment only.

Owns: URLs, pagination, and one-line errors that never hold the token or a response body.
Must not: decide what to post (``github.jobs``), or follow a URL that leaves ``GITHUB_API_URL``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

from hepinfra.errors import HepinfraError, UsageError
from hepinfra.safety.redact import register

COMMENT_LIMIT = 65_536  # characters of an issue or pull-request comment (and an issue's body)
BOT = "github-actions[bot]"  # who GITHUB_TOKEN posts as (it cannot read GET /user)
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


class GitHubError(HepinfraError):
    """A GitHub API call failed (status and what was asked; never the token or a body)."""


class GitHub:
    def __init__(self, api_url: str, repository: str, token: str, *, timeout: float = 30.0) -> None:
        import httpx

        if not _REPO.match(repository):
            raise UsageError(f"GITHUB_REPOSITORY must be OWNER/NAME, not {repository[:80]!r}")
        from urllib.parse import urlsplit

        parts = urlsplit(api_url)
        loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.username is not None or parts.password is not None or not (parts.scheme == "https" or loopback):
            raise UsageError("GITHUB_API_URL must be an https:// URL (or http:// on loopback, for tests)")
        register(token)
        self.api = api_url.rstrip("/")
        self.repo = repository
        self._client = httpx.Client(
            base_url=self.api,
            timeout=timeout,
            follow_redirects=False,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "User-Agent": "hepinfra",
            },
        )
        self._login: str | None = None

    @classmethod
    def from_env(cls) -> GitHub:
        token = os.environ.get("GITHUB_TOKEN", "")
        if not token:
            raise UsageError("GITHUB_TOKEN is not set (the action passes its github-token input there)")
        repo = os.environ.get("GITHUB_REPOSITORY", "")
        return cls(os.environ.get("GITHUB_API_URL") or "https://api.github.com", repo, token)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> GitHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport -------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        import httpx

        what = f"{method} {path.split('?')[0]}"
        try:
            response = self._client.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            raise GitHubError(f"GitHub API {what}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise GitHubError(f"GitHub API {what}: HTTP {response.status_code}", hint=_hint(response.status_code))
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise GitHubError(f"GitHub API {what}: the answer is not JSON") from None

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every item of a listed resource, following ``Link: rel="next"`` on the same API only."""
        import httpx

        url: str | None = path
        query: dict[str, Any] | None = {**params, "per_page": 100}
        for _ in range(1000):  # 100,000 items: far past any pull request's comments
            if url is None:
                return
            what = f"GET {path}"
            try:
                response = self._client.get(url, params=query)
            except httpx.HTTPError as exc:
                raise GitHubError(f"GitHub API {what}: {type(exc).__name__}") from None
            if response.status_code >= 400:
                raise GitHubError(f"GitHub API {what}: HTTP {response.status_code}", hint=_hint(response.status_code))
            try:
                items = response.json()
            except ValueError:
                raise GitHubError(f"GitHub API {what}: the answer is not JSON") from None
            if not isinstance(items, list):
                raise GitHubError(f"GitHub API {what}: the answer is not a list")
            yield from (item for item in items if isinstance(item, dict))
            match = _NEXT.search(response.headers.get("link", ""))
            url, query = (match.group(1), None) if match else (None, None)
            if url is not None and not url.startswith(self.api + "/"):
                raise GitHubError(f"GitHub API {what}: the next page is on another host")

    # --- who am I --------------------------------------------------------------------------------

    def login(self) -> str:
        """The token's identity: GET /user for a personal token; GITHUB_TOKEN cannot read it and posts as
        github-actions[bot]."""
        if self._login is None:
            try:
                user = self._call("GET", "/user")
                self._login = str(user.get("login") or BOT) if isinstance(user, dict) else BOT
            except GitHubError:
                self._login = BOT
        return self._login

    # --- comments --------------------------------------------------------------------------------

    def comments(self, number: int) -> Iterator[dict[str, Any]]:
        return self._pages(f"/repos/{self.repo}/issues/{int(number)}/comments", {})

    def create_comment(self, number: int, body: str) -> dict[str, Any]:
        found: dict[str, Any] = self._call(
            "POST", f"/repos/{self.repo}/issues/{int(number)}/comments", json={"body": body}
        )
        return found

    def update_comment(self, comment_id: int, body: str) -> None:
        self._call("PATCH", f"/repos/{self.repo}/issues/comments/{int(comment_id)}", json={"body": body})

    def upsert_comment(self, number: int, marker: str, body: str, mode: str) -> None:
        """Create or update ONE comment on ``number``: the first one by this token's identity that
        starts with ``marker`` (a comment someone else wrote is never edited); ``mode`` new: always a
        new one; off: none."""
        if mode == "off":
            return
        if mode == "update":
            me = self.login()
            for comment in self.comments(number):
                mine = (comment.get("user") or {}).get("login") == me
                if mine and str(comment.get("body") or "").startswith(marker) and type(comment.get("id")) is int:
                    self.update_comment(comment["id"], body)
                    return
        self.create_comment(number, body)

    # --- pull requests and issues ----------------------------------------------------------------

    def pulls_of_commit(self, sha: str) -> list[dict[str, Any]]:
        if not re.fullmatch(r"[0-9a-f]{7,64}", sha):
            raise UsageError(f"not a commit SHA: {sha[:80]!r}")
        found = self._call("GET", f"/repos/{self.repo}/commits/{sha}/pulls")
        return [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []

    def open_pulls(self, head: str) -> list[dict[str, Any]]:
        """Open pull requests from ``head`` (OWNER:BRANCH)."""
        return list(self._pages(f"/repos/{self.repo}/pulls", {"state": "open", "head": head}))

    def create_pull(self, title: str, head: str, base: str, body: str) -> dict[str, Any]:
        found: dict[str, Any] = self._call(
            "POST", f"/repos/{self.repo}/pulls", json={"title": title, "head": head, "base": base, "body": body}
        )
        return found

    def issues(self, creator: str) -> Iterator[dict[str, Any]]:
        """Issues (not pull requests) opened by ``creator``, open or closed."""
        for item in self._pages(f"/repos/{self.repo}/issues", {"state": "all", "creator": creator}):
            if "pull_request" not in item:
                yield item

    def create_issue(self, title: str, body: str, labels: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = self._call(
            "POST", f"/repos/{self.repo}/issues", json={"title": title, "body": body, "labels": labels}
        )
        return found

    def update_issue(self, number: int, **fields: Any) -> None:
        self._call("PATCH", f"/repos/{self.repo}/issues/{int(number)}", json=fields)


def _hint(status: int) -> str:
    if status in (401, 403):
        return "check the token's permissions: pull-requests: write and issues: write (contents: write for write-back)"
    if status == 404:
        return "check GITHUB_REPOSITORY and the token's access to it"
    if status == 422:
        return "GitHub refused the content (a comment is limited to 65,536 characters)"
    return "GitHub's API failed; run the job again"
