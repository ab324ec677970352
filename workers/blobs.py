"""Blob storage for task results: one async protocol, a local-folder store and an S3 store.

Keys are checked before any I/O: relative, ``/``-separated segments of ``[A-Za-z0-9._-]``,
no empty, ``.`` or ``..`` segments, at most 512 characters (200 per segment, leaving room
for the local store's ``~``-suffixed temp and sidecar names, which no valid key can name).
Blocking calls (file I/O, boto3) run in a thread, so the event loop never waits on them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from taskstream.settings import SettingsError

if TYPE_CHECKING:
    from taskstream.settings import Settings

Backend = Literal["local", "s3"]
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_KEY_LENGTH = 512
MAX_SEGMENT_LENGTH = 200
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class BlobError(Exception):
    """A blob store failed; driver errors are wrapped in this once, at the store's edge."""


class BlobNotFound(BlobError):
    def __init__(self, key: str) -> None:
        super().__init__(f"blob {key!r} not found")
        self.key = key


class InvalidBlobKey(BlobError, ValueError):
    def __init__(self, key: object, reason: str) -> None:
        super().__init__(f"invalid blob key {key!r}: {reason}")
        self.key = key


@dataclass(frozen=True, slots=True)
class BlobRef:
    backend: Backend
    key: str
    size: int
    sha256: str
    content_type: str
    bucket: str | None = None

    @property
    def uri(self) -> str:
        if self.backend == "s3" and self.bucket:
            return f"s3://{self.bucket}/{self.key}"
        return f"blob://{self.backend}/{self.key}"


class BlobStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> BlobRef: ...
    async def get(self, key: str) -> bytes: ...
    async def stat(self, key: str) -> BlobRef: ...
    async def exists(self, key: str) -> bool: ...
    async def delete(self, key: str) -> None: ...


def validate_key(key: object) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``InvalidBlobKey`` (no I/O)."""
    if not isinstance(key, str):
        raise InvalidBlobKey(key, "must be a string")
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidBlobKey(key, f"must be 1 to {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidBlobKey(key, "empty, '.' and '..' segments are not allowed")
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise InvalidBlobKey(key, f"segments are at most {MAX_SEGMENT_LENGTH} characters")
        if not _SEGMENT.fullmatch(segment):
            raise InvalidBlobKey(key, "segments may only hold A-Z a-z 0-9 . _ -")
    return key


def _check_put(key: str, data: bytes, content_type: str) -> bytes:
    validate_key(key)
    if not content_type or any(c in content_type for c in "\r\n\0"):
        raise ValueError(f"invalid content type {content_type!r}")
    return bytes(data)


class LocalBlobStore:
    """Blobs as files under ``root``; content type and sha256 in a ``<name>~meta`` JSON sidecar.

    Each file is replaced atomically (temp file in the same folder, fsync, ``os.replace``,
    fsync of the folder). Data goes first, then the sidecar, which names the data file it
    describes; a missing or stale sidecar (a crash or race between the two) is derived again.
    Filesystem limit: a key cannot also be a folder of other keys (``a`` and ``a/b``).
    """

    backend: Backend = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    async def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> BlobRef:
        body = _check_put(key, data, content_type)
        return await asyncio.to_thread(self._put, key, body, content_type)

    async def get(self, key: str) -> bytes:
        validate_key(key)
        return await asyncio.to_thread(self._get, key)

    async def stat(self, key: str) -> BlobRef:
        validate_key(key)
        return await asyncio.to_thread(self._stat, key)

    async def exists(self, key: str) -> bool:
        validate_key(key)
        return await asyncio.to_thread(lambda: self._path(key).is_file())

    async def delete(self, key: str) -> None:
        validate_key(key)
        await asyncio.to_thread(self._delete, key)

    def _path(self, key: str) -> Path:
        root = self.root.resolve()
        path = root.joinpath(*key.split("/"))
        if not path.resolve().is_relative_to(root):  # a symlink planted inside the root
            raise InvalidBlobKey(key, "resolves outside the blob root")
        return path

    def _put(self, key: str, data: bytes, content_type: str) -> BlobRef:
        path = self._path(key)
        ref = BlobRef("local", key, len(data), hashlib.sha256(data).hexdigest(), content_type)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            meta = {"sha256": ref.sha256, "content_type": content_type, "file": _identity(_write_atomic(path, data))}
            _write_atomic(_sidecar(path), json.dumps(meta).encode())
        except OSError as exc:
            raise BlobError(f"cannot write blob {key!r}: {exc}") from exc
        return ref

    def _get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise BlobNotFound(key) from None
        except OSError as exc:
            raise BlobError(f"cannot read blob {key!r}: {exc}") from exc

    def _stat(self, key: str) -> BlobRef:
        path = self._path(key)
        try:
            st = path.stat() if path.is_file() else None
        except FileNotFoundError:
            st = None
        if st is None:
            raise BlobNotFound(key)
        try:
            meta = json.loads(_sidecar(path).read_bytes())
        except (OSError, ValueError):
            meta = {}
        if meta.get("file") == _identity(st):
            return BlobRef("local", key, st.st_size, str(meta["sha256"]), str(meta["content_type"]))
        data = self._get(key)  # sidecar missing, or of another write (a crash or race): derive
        return BlobRef("local", key, len(data), hashlib.sha256(data).hexdigest(), DEFAULT_CONTENT_TYPE)

    def _delete(self, key: str) -> None:
        path = self._path(key)
        for target in (path, _sidecar(path)):
            try:
                target.unlink(missing_ok=True)
            except (IsADirectoryError, NotADirectoryError):  # a key prefix, or under a blob: no blob
                pass
            except OSError as exc:
                raise BlobError(f"cannot delete blob {key!r}: {exc}") from exc


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + "~meta")


def _identity(st: os.stat_result) -> list[int]:
    """Which file a sidecar describes: os.replace keeps the inode and mtime of the temp file."""
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _write_atomic(path: Path, data: bytes) -> os.stat_result:
    tmp = path.with_name(f"{path.name}~tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            st = os.fstat(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return st


ClientFactory = Callable[[str | None, str], Any]


def s3_client(endpoint_url: str | None, region: str, **kwargs: Any) -> Any:
    """A boto3 S3 client with path-style addressing and SigV4; credentials from kwargs or
    boto3's default chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` first)."""
    import boto3
    from botocore.config import Config

    config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config, **kwargs)


class S3BlobStore:
    """Blobs as S3 objects; sha256 in the object's ``x-amz-meta-sha256``."""

    backend: Backend = "s3"

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        client_factory: ClientFactory = s3_client,
    ) -> None:
        self.bucket, self.endpoint_url, self.region, self._factory = bucket, endpoint_url, region, client_factory
        self._client: Any = None
        self._lock = threading.Lock()

    async def ensure_bucket(self) -> None:
        await self._call(self._ensure_bucket)

    async def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> BlobRef:
        body = _check_put(key, data, content_type)
        ref = BlobRef("s3", key, len(body), hashlib.sha256(body).hexdigest(), content_type, self.bucket)
        await self._call(
            lambda c: c.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, Metadata={"sha256": ref.sha256}
            )
        )
        return ref

    async def get(self, key: str) -> bytes:
        validate_key(key)
        return bytes(await self._call(lambda c: c.get_object(Bucket=self.bucket, Key=key)["Body"].read(), key))

    async def stat(self, key: str) -> BlobRef:
        validate_key(key)
        head = await self._call(lambda c: c.head_object(Bucket=self.bucket, Key=key), key)
        sha256 = head.get("Metadata", {}).get("sha256") or hashlib.sha256(await self.get(key)).hexdigest()
        content_type = head.get("ContentType") or DEFAULT_CONTENT_TYPE
        return BlobRef("s3", key, int(head["ContentLength"]), sha256, content_type, self.bucket)

    async def exists(self, key: str) -> bool:
        validate_key(key)
        try:
            await self._call(lambda c: c.head_object(Bucket=self.bucket, Key=key), key)
        except BlobNotFound:
            return False
        return True

    async def delete(self, key: str) -> None:
        validate_key(key)
        await self._call(lambda c: c.delete_object(Bucket=self.bucket, Key=key))

    async def presign(self, key: str, ttl_seconds: int) -> str:
        """A GET URL valid for ``ttl_seconds`` (SigV4; no request is made)."""
        validate_key(key)
        return str(
            await self._call(
                lambda c: c.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=ttl_seconds)
            )
        )

    def _ensure_bucket(self, client: Any) -> None:
        from botocore.exceptions import ClientError

        try:
            client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                raise
        extra = {} if self.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": self.region}}
        try:
            client.create_bucket(Bucket=self.bucket, **extra)
        except ClientError as exc:
            if _error_code(exc) != "BucketAlreadyOwnedByYou":
                raise

    def _get_client(self) -> Any:
        with self._lock:  # boto3 clients are thread-safe once built; build one, lazily
            if self._client is None:
                self._client = self._factory(self.endpoint_url, self.region)
            return self._client

    async def _call(self, fn: Callable[[Any], Any], key: str | None = None) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        def run() -> Any:
            return fn(self._get_client())

        try:
            return await asyncio.to_thread(run)
        except ClientError as exc:
            if key is not None and _error_code(exc) in _NOT_FOUND_CODES:
                raise BlobNotFound(key) from None
            raise BlobError(f"S3 bucket {self.bucket!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobError(f"S3 at {self.endpoint_url or 'AWS'}: {exc}") from exc


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def blob_store_from_settings(settings: Settings) -> BlobStore:
    """The configured store; no I/O (the S3 client is built on first use)."""
    if settings.blob_backend == "local":
        return LocalBlobStore(settings.blob_dir)
    if settings.blob_backend == "s3":
        if not settings.s3_endpoint_url:
            raise SettingsError("BLOB_BACKEND=s3 needs S3_ENDPOINT_URL")
        if not settings.s3_bucket:
            raise SettingsError("BLOB_BACKEND=s3 needs S3_BUCKET")
        return S3BlobStore(settings.s3_bucket, settings.s3_endpoint_url, settings.s3_region)
    raise SettingsError(f"unknown blob backend {settings.blob_backend!r}")
