"""Client for the uploader (``POST /upload``, multipart field ``file``).

Owns: sending one file and returning its URL. An upload is not idempotent (a retry would
publish a second copy), so only a call that never left is retried.
Must not: show the token.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from hepinfra import errors as E
from hepinfra.hepgg._http import HttpCore
from hepinfra.hepgg.models import Upload, parse

SERVICE = "uploader"


class UploaderClient:
    def __init__(self, core: HttpCore) -> None:
        self._core = core

    async def upload(self, source: str | Path | bytes, filename: str | None = None) -> str:
        """Upload a path or bytes; return the public URL of the uploaded file."""
        if isinstance(source, bytes):
            if not filename:
                raise E.UsageError("uploading bytes needs a filename")
            content = source
        else:
            path = Path(source)
            try:
                content = path.read_bytes()
            except OSError as exc:
                raise E.UsageError(f"{path}: cannot read file to upload: {exc.strerror}") from None
            filename = filename or path.name
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        response = await self._core.call(
            "POST", "/upload", idempotent=False, files={"file": (filename, content, ctype)}
        )
        return parse(Upload, HttpCore.json(response, SERVICE), service=SERVICE, what="upload").url
