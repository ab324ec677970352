"""Time-limited download links for results in blob storage.

S3: a presigned GET URL (SigV4, ``X-Amz-Expires``), checked by S3 itself. The local store has
no server of its own, so the gateway serves it at ``GET /v1/blobs?key=..&expires=..&signature=..``
where ``signature`` is HMAC-SHA256 (the link secret) over ``key`` and ``expires`` (Unix
seconds): a link whose key or expiry was altered, or that has expired, is refused. Links are
made when asked for (``GET /v1/tasks/{id}/result``), never stored: a stored link would expire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from commands.errors import Forbidden, NotFound
from workers.blobs import BlobNotFound, BlobStore, S3BlobStore, validate_key


class LinkRefused(Forbidden):
    """The link is not valid (altered) or no longer valid (expired): 403."""

    slug = "link-refused"
    title = "The download link is not valid"


def _signature(secret: bytes, key: str, expires: int) -> str:
    mac = hmac.new(secret, f"{key}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def sign_local(secret: bytes, key: str, expires: int) -> dict[str, str]:
    return {"key": key, "expires": str(expires), "signature": _signature(secret, key, expires)}


def verify_local(secret: bytes, key: str, expires: str, signature: str, now: float | None = None) -> str:
    """The key, if the link is authentic and current; else ``LinkRefused``."""
    try:
        validate_key(key)
        expires_at = int(expires)
    except ValueError:
        raise LinkRefused("the link is not valid") from None
    if not hmac.compare_digest(_signature(secret, key, expires_at), signature or ""):
        raise LinkRefused("the link is not valid")
    if (time.time() if now is None else now) >= expires_at:
        raise LinkRefused("the link has expired")
    return key


def parse_uri(uri: str) -> tuple[str, str]:
    """``blob://local/<key>`` or ``s3://<bucket>/<key>`` -> (backend, key)."""
    for prefix, backend in (("blob://local/", "local"), ("blob://s3/", "s3")):
        if uri.startswith(prefix):
            return backend, uri[len(prefix) :]
    if uri.startswith("s3://"):
        return "s3", uri[5:].partition("/")[2]
    raise ValueError(f"not a blob uri: {uri!r}")


@dataclass(frozen=True)
class ResultLinks:
    blobs: BlobStore
    secret: bytes
    ttl_seconds: int = 900

    async def link(self, uri: str, base_url: str) -> dict[str, Any]:
        backend, key = parse_uri(uri)
        expires = int(time.time()) + self.ttl_seconds
        if backend == "s3":
            if not isinstance(self.blobs, S3BlobStore):
                raise ValueError("this result is in S3, and this gateway has no S3 store")
            url = await self.blobs.presign(key, self.ttl_seconds)
        else:
            url = f"{base_url.rstrip('/')}/v1/blobs?{urlencode(sign_local(self.secret, key, expires))}"
        return {"url": url, "expires_at": expires}

    async def open_local(self, key: str, expires: str, signature: str) -> tuple[bytes, str]:
        """The blob's bytes and type for a valid link: LinkRefused (403) or NotFound (404)."""
        verify_local(self.secret, key, expires, signature)
        try:
            ref = await self.blobs.stat(key)
            return await self.blobs.get(key), ref.content_type
        except BlobNotFound:
            raise NotFound("no such blob") from None
