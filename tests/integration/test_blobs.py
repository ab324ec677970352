"""The BlobStore contract, run against the local-folder store and S3 (a real moto server).

S3 talks only to the loopback server from the ``s3_endpoint`` fixture, with fake credentials
passed to the client, and one unique bucket per session; keys are unique per test.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from taskstream.settings import Settings, SettingsError
from workers.blobs import (
    BlobError,
    BlobNotFound,
    BlobStore,
    InvalidBlobKey,
    LocalBlobStore,
    S3BlobStore,
    blob_store_from_settings,
    s3_client,
    validate_key,
)

MIB = 1024 * 1024
INVALID_KEYS = [
    "", ".", "..", "../x", "a/../../b", "a/./b", "a//b", "a/", "/abs", "/etc/passwd", "a\\b", "..\\x",
    "a\x00b", "a b", "a\nb", "ü", "a?b", "~", "a~meta", "a~tmp-1", "x" * 201, "a/" * 256 + "a",
]


@pytest.fixture(scope="session")
async def s3_store(s3_endpoint: str) -> S3BlobStore:
    host = urlsplit(s3_endpoint).hostname
    if host not in ("127.0.0.1", "::1", "localhost"):
        pytest.skip(f"S3 tests only run against a loopback server, not {host}")
    factory = functools.partial(s3_client, aws_access_key_id="test", aws_secret_access_key="test")
    store = S3BlobStore(f"taskstream-test-{uuid.uuid4().hex[:12]}", s3_endpoint, "us-east-1", factory)
    await store.ensure_bucket()
    return store


@pytest.fixture(params=["local", "s3"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    s3: S3BlobStore = request.getfixturevalue("s3_store")
    return s3


@pytest.fixture
def key(unique: str) -> str:
    return f"results/task-{unique}/output.bin"


def _no_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every blocking call goes through asyncio.to_thread: forbid it to prove no I/O happens."""

    async def forbidden(*args: object, **kwargs: object) -> object:
        raise AssertionError("I/O attempted")

    monkeypatch.setattr(asyncio, "to_thread", forbidden)


class TestBlobStoreContract:
    @pytest.mark.parametrize("size", [0, 1, 1000, MIB])
    async def test_round_trip(self, blob_store: BlobStore, key: str, size: int) -> None:
        data = os.urandom(size)
        ref = await blob_store.put(key, data)
        assert (ref.key, ref.size, ref.sha256) == (key, size, hashlib.sha256(data).hexdigest())
        assert ref.content_type == "application/octet-stream"
        assert await blob_store.get(key) == data

    async def test_ref_carries_content_type_sha256_and_uri(self, blob_store: BlobStore, key: str) -> None:
        data = b'{"ok": true}'
        ref = await blob_store.put(key, data, "application/json")
        assert ref.content_type == "application/json"
        assert ref.sha256 == hashlib.sha256(data).hexdigest()
        assert ref.uri.endswith(f"/{key}") and not ref.uri.startswith("file:")
        assert await blob_store.stat(key) == ref

    async def test_odd_but_valid_keys(self, blob_store: BlobStore, unique: str) -> None:
        for k in (f"{unique}/...", f"{unique}/.hidden", f"{unique}/a-b_c.D9", unique + "x" * (200 - len(unique))):
            await blob_store.put(k, k.encode())
            assert await blob_store.get(k) == k.encode()

    async def test_overwrite_replaces_data_and_metadata(self, blob_store: BlobStore, key: str) -> None:
        await blob_store.put(key, b"first version, longer", "text/plain")
        ref = await blob_store.put(key, b"second", "application/json")
        assert await blob_store.get(key) == b"second"
        assert await blob_store.stat(key) == ref
        assert ref.size == 6 and ref.content_type == "application/json"

    async def test_exists_and_idempotent_delete(self, blob_store: BlobStore, key: str) -> None:
        assert not await blob_store.exists(key)
        await blob_store.put(key, b"x")
        assert await blob_store.exists(key)
        await blob_store.delete(key)
        assert not await blob_store.exists(key)
        await blob_store.delete(key)
        await blob_store.delete(f"{key}/never-written")

    async def test_missing_blob_raises_not_found(self, blob_store: BlobStore, key: str) -> None:
        with pytest.raises(BlobNotFound) as info:
            await blob_store.get(key)
        assert info.value.key == key
        with pytest.raises(BlobNotFound):
            await blob_store.stat(key)
        await blob_store.put(key, b"x")
        await blob_store.delete(key)
        with pytest.raises(BlobNotFound):
            await blob_store.get(key)

    async def test_prefix_of_a_key_is_not_a_blob(self, blob_store: BlobStore, key: str) -> None:
        await blob_store.put(key, b"x")
        prefix = key.rsplit("/", 1)[0]
        assert not await blob_store.exists(prefix)
        with pytest.raises(BlobNotFound):
            await blob_store.get(prefix)
        await blob_store.delete(prefix)
        assert await blob_store.get(key) == b"x"

    @pytest.mark.parametrize("bad", INVALID_KEYS)
    async def test_invalid_keys_refused_before_io(
        self, blob_store: BlobStore, bad: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _no_threads(monkeypatch)
        calls: list[Callable[[], Any]] = [
            lambda: blob_store.put(bad, b"x"), lambda: blob_store.get(bad), lambda: blob_store.stat(bad),
            lambda: blob_store.exists(bad), lambda: blob_store.delete(bad),
        ]
        for call in calls:
            with pytest.raises(InvalidBlobKey):
                await call()

    async def test_bad_content_type_refused(self, blob_store: BlobStore, key: str) -> None:
        for content_type in ("", "text/plain\r\nX-Evil: 1"):
            with pytest.raises(ValueError):
                await blob_store.put(key, b"x", content_type)
        assert not await blob_store.exists(key)


def test_non_string_keys_are_invalid() -> None:
    for bad in (None, b"a", 1, Path("a")):
        with pytest.raises(InvalidBlobKey):
            validate_key(bad)
    assert validate_key("a/b.c") == "a/b.c"


class TestLocalBlobStore:
    async def test_uri_and_layout(self, tmp_path: Path) -> None:
        store = LocalBlobStore(tmp_path)
        ref = await store.put("a/b.txt", b"hi", "text/plain")
        assert ref.uri == "blob://local/a/b.txt"
        assert (tmp_path / "a" / "b.txt").read_bytes() == b"hi"
        assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.txt", "b.txt~meta"]

    async def test_temp_file_is_never_visible_under_the_key(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = LocalBlobStore(tmp_path)
        await store.put("k", b"old")
        real_replace = os.replace
        seen: list[str] = []

        def spy(src: Any, dst: Any) -> None:
            src, dst = Path(src), Path(dst)
            assert src.parent == dst.parent  # same folder, so the rename is atomic
            with pytest.raises(InvalidBlobKey):
                validate_key(src.name)  # no key can name a temp file
            if dst.name == "k":
                assert dst.read_bytes() == b"old" and src.read_bytes() == b"new"
            seen.append(src.name)
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", spy)
        await store.put("k", b"new")
        assert len(seen) == 2  # data, then sidecar
        assert await store.get("k") == b"new"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k~meta"]

    async def test_failed_write_keeps_old_blob_and_leaves_no_temp(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = LocalBlobStore(tmp_path)
        old = await store.put("k", b"old", "text/plain")

        def broken_fsync(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", broken_fsync)
        with pytest.raises(BlobError, match="No space left"):
            await store.put("k", b"new" * 1000)
        monkeypatch.undo()
        assert await store.get("k") == b"old"
        assert await store.stat("k") == old
        assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k~meta"]

    async def test_concurrent_readers_see_whole_versions_only(self, tmp_path: Path) -> None:
        store = LocalBlobStore(tmp_path)
        a, b = b"a" * MIB, b"b" * (MIB // 2)
        await store.put("k", a)
        ops = [store.put("k", a if i % 2 else b) for i in range(20)] + [store.get("k") for _ in range(40)]
        results = await asyncio.gather(*ops)
        assert all(r in (a, b) for r in results if isinstance(r, bytes))

    async def test_missing_sidecar_is_derived(self, tmp_path: Path) -> None:
        store = LocalBlobStore(tmp_path)
        ref = await store.put("k", b"data", "text/plain")
        (tmp_path / "k~meta").unlink()
        derived = await store.stat("k")
        assert (derived.size, derived.sha256) == (ref.size, ref.sha256)
        assert derived.content_type == "application/octet-stream"

    async def test_stale_sidecar_is_never_trusted(self, tmp_path: Path) -> None:
        store = LocalBlobStore(tmp_path)
        await store.put("k", b"aaaa", "text/plain")
        stale = (tmp_path / "k~meta").read_bytes()
        new = await store.put("k", b"bbbb", "text/plain")  # same size: only the file identity differs
        (tmp_path / "k~meta").write_bytes(stale)  # as if a crash came between data and sidecar
        derived = await store.stat("k")
        assert (derived.size, derived.sha256) == (4, new.sha256)
        (tmp_path / "k~meta").write_bytes(b"{not json")
        assert (await store.stat("k")).sha256 == new.sha256

    async def test_key_under_a_blob_is_a_clean_error(self, tmp_path: Path) -> None:
        store = LocalBlobStore(tmp_path)
        await store.put("a", b"x")
        await store.put("d/b", b"y")
        with pytest.raises(BlobError):
            await store.put("a/b", b"z")  # the filesystem cannot hold both a and a/b
        with pytest.raises(BlobError):
            await store.put("d", b"z")
        assert not await store.exists("a/b") and not await store.exists("d")
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "a~meta", "b", "b~meta", "d"]

    async def test_traversal_attempts_never_touch_the_outside(self, tmp_path: Path) -> None:
        root, outside = tmp_path / "root", tmp_path / "outside"
        outside.mkdir()
        (outside / "secret").write_bytes(b"secret")
        store = LocalBlobStore(root)
        attempts = ["../outside/secret", "../x", "a/../../x", str(tmp_path / "abs"), str(outside / "secret"),
                    "..\\x", "a/..\\..\\x", "x\x00/../../y", "./x", "a/./../x"]
        for bad in attempts:
            for op in (store.put(bad, b"pwned"), store.get(bad), store.delete(bad), store.exists(bad)):
                with pytest.raises(InvalidBlobKey):
                    await op
        assert [p.name for p in tmp_path.iterdir()] == ["outside"]  # not even the root was created
        assert [p.name for p in outside.iterdir()] == ["secret"]
        assert (outside / "secret").read_bytes() == b"secret"

    async def test_symlink_inside_root_cannot_lead_outside(self, tmp_path: Path) -> None:
        root, outside = tmp_path / "root", tmp_path / "outside"
        root.mkdir()
        outside.mkdir()
        (root / "link").symlink_to(outside, target_is_directory=True)
        store = LocalBlobStore(root)
        with pytest.raises(InvalidBlobKey, match="outside the blob root"):
            await store.put("link/x", b"pwned")
        with pytest.raises(InvalidBlobKey):
            await store.delete("link/x")
        assert list(outside.iterdir()) == []


class TestS3BlobStore:
    async def test_uri_metadata_and_content_type_on_the_object(self, s3_store: S3BlobStore, key: str) -> None:
        ref = await s3_store.put(key, b"payload", "text/csv")
        assert ref.uri == f"s3://{s3_store.bucket}/{key}"
        client = s3_store._get_client()
        head = await asyncio.to_thread(client.head_object, Bucket=s3_store.bucket, Key=key)
        assert head["Metadata"]["sha256"] == ref.sha256 and head["ContentType"] == "text/csv"

    async def test_ensure_bucket_is_idempotent(self, s3_store: S3BlobStore, key: str) -> None:
        fresh = S3BlobStore(f"fresh-{uuid.uuid4().hex[:12]}", s3_store.endpoint_url, "us-east-1", s3_store._factory)
        with pytest.raises(BlobError):
            await fresh.put(key, b"x")  # no bucket yet
        await fresh.ensure_bucket()  # creates it
        await fresh.put(key, b"kept")
        await fresh.ensure_bucket()  # again: neither fails nor empties the bucket
        assert await fresh.get(key) == b"kept"

    async def test_missing_bucket_is_a_blob_error_not_not_found(self, s3_store: S3BlobStore, key: str) -> None:
        other = S3BlobStore(f"missing-{uuid.uuid4().hex[:12]}", s3_store.endpoint_url, "us-east-1", s3_store._factory)
        with pytest.raises(BlobError):
            await other.put(key, b"x")


class TestBlobStoreFromSettings:
    def test_local_by_default(self, tmp_path: Path) -> None:
        store = blob_store_from_settings(Settings(database_url="postgresql://unused", blob_dir=tmp_path / "b"))
        assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "b"
        assert not (tmp_path / "b").exists()

    def test_s3_needs_an_endpoint_and_bucket(self) -> None:
        with pytest.raises(SettingsError, match="S3_ENDPOINT_URL"):
            blob_store_from_settings(Settings(database_url="x", blob_backend="s3"))
        with pytest.raises(SettingsError, match="S3_BUCKET"):
            blob_store_from_settings(
                Settings(database_url="x", blob_backend="s3", s3_endpoint_url="http://127.0.0.1:1", s3_bucket="")
            )

    def test_s3_store_is_built_without_io(self) -> None:
        endpoint = "http://127.0.0.1:1"
        settings = Settings(
            database_url="x", blob_backend="s3", s3_endpoint_url=endpoint, s3_bucket="b", s3_region="eu-west-1"
        )
        store = blob_store_from_settings(settings)
        assert isinstance(store, S3BlobStore)
        assert (store.bucket, store.endpoint_url, store.region) == ("b", endpoint, "eu-west-1")
        assert store._client is None  # built on first use, in a thread
