"""The blob store: keys from validated UIDs only, the same behaviour on a folder and on S3."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from infra.blobstore import (
    BlobKey,
    BlobNotFound,
    BlobRef,
    BlobStore,
    BlobStoreConfigError,
    BlobStoreError,
    BlobStoreUnavailable,
    FolderBlobStore,
    InsufficientSpace,
    InvalidKey,
    InvalidUID,
    S3BlobStore,
    blob_key,
    instance_key,
    make_s3_client,
    open_blob_store,
    parse_key,
    validate_uid,
)
from infra.errors import PermanentError, TransientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.2"


def sop(n: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.1.2.{n}"


@dataclass
class Backend:
    """A store under test and a way to see everything it (or a stray write) left behind."""

    store: BlobStore
    everything: Callable[[], set[str]]


def _files_around(root: Path) -> Callable[[], set[str]]:
    """Every entry in the root's grandparent tree, so a write that escaped the root shows up."""
    outer = root.parent.parent

    def everything() -> set[str]:
        found = {str(p.relative_to(outer)) for p in root.parent.rglob("*")}
        return found | {p.name for p in outer.iterdir()}

    return everything


def _s3_client(endpoint: str) -> S3Client:
    return make_s3_client(
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )


@pytest.fixture
def folder_store(tmp_path: Path) -> FolderBlobStore:
    return FolderBlobStore(tmp_path / "blobs", min_free_bytes=0)


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> Iterator[tuple[str, S3Client]]:
    client = _s3_client(moto_endpoint)
    bucket = f"talaria-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield bucket, client
    client.close()


@pytest.fixture(params=["folder", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "folder":
        folder = FolderBlobStore(tmp_path / "blobs", min_free_bytes=0)
        yield Backend(folder, _files_around(folder.root))
        return
    bucket, client = request.getfixturevalue("s3_bucket")
    s3 = S3BlobStore(bucket=bucket, prefix="talaria", client=client)

    def everything() -> set[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    yield Backend(s3, everything)


@pytest.fixture
def store(backend: Backend) -> BlobStore:
    return backend.store


# --- keys ---------------------------------------------------------------------------------------


def test_an_instance_key_is_built_from_its_uids() -> None:
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(7))
    assert key.path == f"studies/{STUDY}/{SERIES}/{sop(7)}.dcm"
    assert str(key) == key.path
    assert parse_key(key.path) == key


def test_job_keys_are_built_from_safe_segments() -> None:
    key = blob_key("jobs", "3f2a-9c", "out", "x.dcm")
    assert key.path == "jobs/3f2a-9c/out/x.dcm"
    assert parse_key("jobs/3f2a-9c/out/x.dcm") == key


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "../../etc",
        "1..2",
        ".1",
        "1.",
        "1.2/../3",
        "/etc/passwd",
        "1.2\x00",
        "1" * 65,
        "1.2.a",
        "1.2 ",
        "1.2\n",
        "\u0661.\u0662",  # Arabic-Indic digits: \d would accept them, DICOM does not
    ],
)
def test_a_bad_uid_is_refused(uid: str) -> None:
    with pytest.raises(InvalidUID):
        validate_uid(uid)
    for field in ("study_uid", "series_uid", "sop_uid"):
        uids = {"study_uid": STUDY, "series_uid": SERIES, "sop_uid": sop(1)} | {field: uid}
        with pytest.raises(InvalidUID):
            instance_key(**uids)


def test_uid_errors_are_permanent_value_errors() -> None:
    with pytest.raises(InvalidUID, match="64") as caught:
        validate_uid("1" * 65)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, InvalidKey)
    assert isinstance(caught.value, PermanentError)
    assert isinstance(caught.value, BlobStoreError)


def test_the_longest_uid_is_accepted() -> None:
    assert validate_uid("1." + "2" * 62) == "1." + "2" * 62
    assert validate_uid("0") == "0"


@pytest.mark.parametrize(
    "segments",
    [
        (),
        ("..",),
        (".",),
        ("jobs", "..", "x"),
        ("jobs/x",),
        ("/etc",),
        ("",),
        ("a\x00b",),
        (".tmp-123",),
        ("x" * 129,),
        ("a b",),
        ("café",),
    ],
)
def test_blob_key_refuses_unsafe_segments(segments: tuple[str, ...]) -> None:
    with pytest.raises(InvalidKey):
        blob_key(*segments)


@pytest.mark.parametrize(
    "text",
    ["", "/etc/passwd", "studies/../x", "a//b", "a/", "./a", "a/..", "a\\..\\b", "a/\x00"],
)
def test_parse_key_refuses_what_blob_key_would(text: str) -> None:
    with pytest.raises(InvalidKey):
        parse_key(text)
    with pytest.raises(InvalidKey):
        BlobKey(text)


components = st.one_of(st.just("0"), st.integers(min_value=1, max_value=10**12).map(str))
valid_uids = (
    st.lists(components, min_size=1, max_size=12).map(".".join).filter(lambda u: len(u) <= 64)
)


@given(valid_uids)
def test_every_uid_made_of_valid_components_is_accepted(uid: str) -> None:
    assert validate_uid(uid) == uid
    key = instance_key(study_uid=uid, series_uid=uid, sop_uid=uid)
    assert parse_key(key.path) == key


@given(st.text(min_size=1).filter(lambda s: any(c not in "0123456789." for c in s)))
def test_any_character_outside_digits_and_dots_is_refused(text: str) -> None:
    with pytest.raises(InvalidUID):
        validate_uid(text)


@given(st.lists(components, min_size=1, max_size=5), st.data())
def test_leading_zeros_that_real_scanners_send_are_accepted(
    parts: list[str], data: st.DataObject
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(parts) - 1))
    parts[index] = "0" + parts[index]
    uid = ".".join(parts)
    if len(uid) <= 64:
        assert validate_uid(uid) == uid


# --- both stores --------------------------------------------------------------------------------


def test_a_put_blob_comes_back_with_its_size_and_checksum(store: BlobStore) -> None:
    data = os.urandom(100_000)
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(1))

    ref = store.put(key, data)

    assert ref == BlobRef(key=key.path, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert store.get(key) == data


def test_a_blob_is_materialised_as_a_working_file(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(2))
    store.put(key, data)
    store.copy_to(key, tmp_path / "work.dcm")
    assert (tmp_path / "work.dcm").read_bytes() == data
    with pytest.raises(BlobNotFound):
        store.copy_to(blob_key("jobs", "none", "x.dcm"), tmp_path / "missing.dcm")
    assert not (tmp_path / "missing.dcm").exists()


def test_putting_a_key_again_replaces_the_blob(store: BlobStore) -> None:
    key = blob_key("jobs", "j1", "out", "x.dcm")
    store.put(key, b"first")
    store.put(key, b"second")
    assert store.get(key) == b"second"
    assert list(store.list("jobs")) == [key.path]


def test_a_staged_blob_says_whether_it_replaces_one(store: BlobStore) -> None:
    key = blob_key("jobs", "j1", "result.json")
    first = store.stage(key, b"first")
    assert first.replaces is False
    first.commit()

    second = store.stage(key, b"second")
    assert second.replaces is True
    second.discard()
    assert store.get(key) == b"first"


def test_an_empty_blob_is_a_blob(store: BlobStore) -> None:
    key = blob_key("jobs", "j1", "log.txt")
    assert store.put(key, b"").size == 0
    assert store.exists(key)
    assert store.get(key) == b""


def test_exists_and_delete(store: BlobStore) -> None:
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(2))
    assert not store.exists(key)
    assert store.delete(key) is False

    store.put(key, b"dicom")
    assert store.exists(key)

    assert store.delete(key) is True
    assert not store.exists(key)
    assert store.delete(key) is False


def test_a_missing_blob_is_not_found(store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        store.get(instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(3)))
    with pytest.raises(BlobNotFound):
        store.get(blob_key("studies"))  # a folder on the folder store, nothing on S3


def test_list_is_sorted_and_cut_at_whole_segments(store: BlobStore) -> None:
    keys = [
        instance_key(study_uid="1.2", series_uid="1.2.3", sop_uid="1.2.3.10"),
        instance_key(study_uid="1.2", series_uid="1.2.3", sop_uid="1.2.3.9"),
        instance_key(study_uid="1.2", series_uid="1.2.4", sop_uid="1.2.4.1"),
        instance_key(study_uid="1.23", series_uid="1.23.1", sop_uid="1.23.1.1"),
        instance_key(study_uid="1.2.1", series_uid="1.2.1.1", sop_uid="1.2.1.1.1"),
        blob_key("jobs", "j1", "out", "a.dcm"),
    ]
    for key in reversed(keys):
        store.put(key, key.path.encode())

    study_1_2 = sorted(k.path for k in keys if k.path.startswith("studies/1.2/"))
    assert list(store.list("studies/1.2")) == study_1_2
    assert list(store.list("studies/1.2/")) == study_1_2
    assert list(store.list(blob_key("studies", "1.2", "1.2.3"))) == [keys[0].path, keys[1].path]
    assert list(store.list("studies")) == sorted(k.path for k in keys if k.path[0] == "s")
    assert list(store.list("")) == sorted(k.path for k in keys)
    assert list(store.list("studies/1")) == []
    assert list(store.list("nothing/here")) == []
    assert list(store.list(keys[0].path)) == []  # a key is not a folder


def test_unsafe_names_are_refused_before_any_io(backend: Backend) -> None:
    store = backend.store
    store.put(blob_key("jobs", "j1", "keep.txt"), b"keep")
    before = backend.everything()
    attempts: list[Callable[[], object]] = [
        lambda: instance_key(study_uid="../../etc", series_uid=SERIES, sop_uid=sop(1)),
        lambda: instance_key(study_uid=STUDY, series_uid="../../etc", sop_uid=sop(1)),
        lambda: instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid="../../etc"),
        lambda: instance_key(study_uid="1.2/../3", series_uid=SERIES, sop_uid=sop(1)),
        lambda: instance_key(study_uid="/etc", series_uid=SERIES, sop_uid=sop(1)),
        lambda: instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid="1" * 65),
        lambda: instance_key(study_uid=STUDY, series_uid="1.2.abc", sop_uid=sop(1)),
        lambda: instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid="1.2\x00"),
        lambda: blob_key("jobs", "..", "..", "escape"),
        lambda: blob_key("jobs", "", "x"),
        lambda: blob_key("/tmp/escape"),
        lambda: parse_key("/tmp/escape"),
        lambda: parse_key("jobs/../../escape"),
        lambda: store.put("../escape", b"x"),  # type: ignore[arg-type]
        lambda: store.get("/etc/passwd"),  # type: ignore[arg-type]
        lambda: store.list("../.."),
        lambda: store.list("/etc"),
        lambda: store.list("jobs//j1"),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidKey):
            attempt()
    assert backend.everything() == before


def test_store_errors_say_what_to_do() -> None:
    assert issubclass(InsufficientSpace, TransientError)
    assert issubclass(BlobStoreUnavailable, TransientError)
    assert issubclass(BlobNotFound, PermanentError)
    for error in (InsufficientSpace, BlobStoreUnavailable, BlobNotFound, InvalidKey, InvalidUID):
        assert issubclass(error, BlobStoreError)


# --- folder store -------------------------------------------------------------------------------


@contextmanager
def refused_port() -> Iterator[int]:
    """A local port that is bound (so nobody else takes it) but refuses connections."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


def test_a_put_over_the_free_space_watermark_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    probe = FolderBlobStore(root, min_free_bytes=0)
    full = FolderBlobStore(root, min_free_bytes=probe.free_bytes() + 1)
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(1))

    with pytest.raises(InsufficientSpace):
        full.check_free_space(1)
    with pytest.raises(InsufficientSpace):
        full.put(key, b"dicom")

    assert not probe.exists(key)
    assert list(root.rglob("*")) == []


def test_a_disk_that_fills_up_mid_write_is_insufficient_space(
    folder_store: FolderBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder_store.put(instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(1)), b"one")
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(2))

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(InsufficientSpace):
        folder_store.put(key, b"two")
    monkeypatch.undo()

    assert not folder_store.exists(key)
    assert _leftovers(folder_store.root) == []
    assert list(folder_store.list("")) == [f"studies/{STUDY}/{SERIES}/{sop(1)}.dcm"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_write_leaves_nothing_behind(
    folder_store: FolderBlobStore, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    kept = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(1))
    folder_store.put(kept, b"kept")
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(2))

    def broken(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(BlobStoreUnavailable):
        folder_store.put(key, b"lost")
    monkeypatch.undo()

    assert not folder_store.exists(key)
    assert _leftovers(folder_store.root) == []
    assert folder_store.get(kept) == b"kept"


def test_a_failed_overwrite_keeps_the_old_blob(
    folder_store: FolderBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = blob_key("jobs", "j1", "result.json")
    folder_store.put(key, b"old")

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(BlobStoreUnavailable):
        folder_store.put(key, b"new")
    monkeypatch.undo()

    assert folder_store.get(key) == b"old"
    assert _leftovers(folder_store.root) == []


@pytest.mark.parametrize(
    ("earlier", "flush"),
    [(None, "fdatasync"), (b"earlier", "fsync")],
    ids=["new key flushed in place", "replacement flushed before its rename"],
)
def test_a_blob_whose_flush_fails_leaves_a_later_writers_blob(
    folder_store: FolderBlobStore,
    monkeypatch: pytest.MonkeyPatch,
    earlier: bytes | None,
    flush: str,
) -> None:
    """A commit whose disk flush fails leaves nothing of its own, and the blob another writer
    stored meanwhile stays."""
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(1))
    if earlier is not None:
        folder_store.put(key, earlier)
    staged = folder_store.stage(key, b"mine")
    original = getattr(os, flush)

    def another_writer_then_fail(fd: int) -> None:
        monkeypatch.setattr(os, flush, original)
        folder_store.put(key, b"theirs")
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, flush, another_writer_then_fail)
    with pytest.raises(BlobStoreUnavailable):
        staged.commit()

    assert folder_store.get(key) == b"theirs"
    assert _leftovers(folder_store.root) == []


def test_a_new_key_is_written_in_place_and_flushed_once(
    folder_store: FolderBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staging a new key in an existing folder writes its file whole; commit flushes that file
    and nothing else (one disk flush per received instance), and never renames."""
    folder_store.put(instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(2)), b"")
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(1))
    flushed: list[str] = []
    for name in ("fsync", "fdatasync"):
        original = getattr(os, name)

        def record(fd: int, original: Callable[[int], None] = original, name: str = name) -> None:
            flushed.append(f"{name} {os.readlink(f'/proc/self/fd/{fd}')}")
            original(fd)

        monkeypatch.setattr(os, name, record)
    monkeypatch.setattr(os, "replace", None)  # a call would raise TypeError

    staged = folder_store.stage(key, b"bytes of an instance")
    assert staged.replaces is False
    assert folder_store.get(key) == b"bytes of an instance"
    staged.commit()

    assert flushed == [f"fdatasync {folder_store.root / key.path}"]
    assert folder_store.get(key) == b"bytes of an instance"
    assert _leftovers(folder_store.root) == []


def test_a_write_after_the_cleaner_pruned_its_folder_makes_the_folder_again(
    folder_store: FolderBlobStore,
) -> None:
    first = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(1))
    second = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(2))
    folder_store.put(first, b"first")
    folder_store.delete(first)
    folder_store.prune_empty_folders(first)
    assert not (folder_store.root / first.path).parent.exists()

    folder_store.stage(second, b"second").commit()
    assert folder_store.get(second) == b"second"


def _cached_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mincore(2) of a mapping of it)."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    resident = (ctypes.c_ubyte * pages)()
    mincore = ctypes.CDLL(None, use_errno=True).mincore
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    with path.open("rb") as file, mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY) as view:
        start = ctypes.c_char.from_buffer(view)
        try:
            if mincore(ctypes.addressof(start), size, resident) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del start  # the mapping cannot close while exported
    return sum(page & 1 for page in resident)


@pytest.mark.parametrize("size", [65_536, 65_537, 3 * 1024 * 1024 + 4095])
def test_a_large_blob_is_written_past_the_page_cache(
    folder_store: FolderBlobStore, size: int
) -> None:
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(size))
    data = os.urandom(size)

    folder_store.stage(key, data).commit()

    path = folder_store.root / key.path
    assert _cached_pages(path) == (1 if size % 4096 else 0)  # at most the partial last block
    assert folder_store.get(key) == data


def test_where_o_direct_is_refused_a_large_blob_goes_through_the_cache(
    folder_store: FolderBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fcntl = fcntl.fcntl

    def refusing_direct(fd: int, command: int, argument: int = 0) -> int:
        if command == fcntl.F_SETFL and argument & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT not supported")
        return real_fcntl(fd, command, argument)

    monkeypatch.setattr(fcntl, "fcntl", refusing_direct)
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(1))
    data = os.urandom(200_000)

    folder_store.stage(key, data).commit()

    assert _cached_pages(folder_store.root / key.path) == 49  # every page, as written
    assert folder_store.get(key) == data


def test_a_discarded_new_key_leaves_nothing(folder_store: FolderBlobStore) -> None:
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(1))
    folder_store.stage(key, b"never committed").discard()
    assert not folder_store.exists(key)
    assert _leftovers(folder_store.root) == []


def test_a_staged_replacement_is_hidden_until_its_commit(folder_store: FolderBlobStore) -> None:
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(1))
    folder_store.put(key, b"first")
    staged = folder_store.stage(key, b"second")
    assert folder_store.get(key) == b"first"
    staged.commit()
    assert folder_store.get(key) == b"second"
    assert _leftovers(folder_store.root) == []


def test_concurrent_writers_of_one_key_leave_exactly_one_payload(
    folder_store: FolderBlobStore,
) -> None:
    writers = 16
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(1))
    for _ in range(3):
        payloads = [os.urandom(1 << 20) for _ in range(writers)]
        _race_to_put(folder_store, key, payloads)

        assert folder_store.get(key) in payloads
        assert _leftovers(folder_store.root) == []
        assert list(folder_store.list("")) == [key.path]


def _race_to_put(store: BlobStore, key: BlobKey, payloads: list[bytes]) -> None:
    """Release one thread per payload at the same instant; any writer's error is re-raised."""
    start = threading.Barrier(len(payloads))

    def write(data: bytes) -> BlobRef:
        start.wait()
        return store.put(key, data)

    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        list(pool.map(write, payloads))


def test_list_ignores_temp_files_and_foreign_names(folder_store: FolderBlobStore) -> None:
    key = blob_key("jobs", "j1", "a.txt")
    folder_store.put(key, b"a")
    (folder_store.root / "jobs" / "j1" / ".tmp-1-2-abc").write_bytes(b"partial")
    (folder_store.root / "jobs" / "j1" / "with space").write_bytes(b"foreign")
    assert list(folder_store.list("")) == [key.path]


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "blobs"
    store = FolderBlobStore(root, min_free_bytes=0)
    (root / "studies").symlink_to(outside, target_is_directory=True)

    with pytest.raises(InvalidKey):
        store.put(instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(1)), b"x")
    with pytest.raises(InvalidKey):
        store.list("studies")
    assert list(outside.iterdir()) == []


def test_the_folder_store_describes_itself(folder_store: FolderBlobStore) -> None:
    assert folder_store.describe() == f"folder:{folder_store.root}"
    assert folder_store.free_bytes() > 0


# --- S3 store -----------------------------------------------------------------------------------


def test_s3_objects_live_under_the_prefix(s3_bucket: tuple[str, S3Client]) -> None:
    bucket, client = s3_bucket
    store = S3BlobStore(bucket=bucket, prefix="site-a/blobs/", client=client)
    key = instance_key(study_uid=STUDY, series_uid=SERIES, sop_uid=sop(1))
    ref = store.put(key, b"dicom")

    head = client.head_object(Bucket=bucket, Key=f"site-a/blobs/{key.path}")
    assert head["ContentLength"] == 5
    assert head["Metadata"] == {"sha256": ref.sha256}
    assert store.describe() == f"s3://{bucket}/site-a/blobs/"


def test_s3_listing_skips_objects_that_are_not_keys(s3_bucket: tuple[str, S3Client]) -> None:
    bucket, client = s3_bucket
    store = S3BlobStore(bucket=bucket, client=client)
    client.put_object(Bucket=bucket, Key="jobs/j1/not a key", Body=b"x")
    store.put(blob_key("jobs", "j1", "a.txt"), b"a")
    assert list(store.list("jobs")) == ["jobs/j1/a.txt"]
    store.check_free_space(10**15)  # S3 never runs out


def test_an_unreachable_s3_is_unavailable() -> None:
    with refused_port() as port:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1),
        )
        store = S3BlobStore(bucket="talaria", client=client)
        key = blob_key("jobs", "j1", "a.txt")
        for call in (
            lambda: store.put(key, b"a"),
            lambda: store.get(key),
            lambda: store.exists(key),
            lambda: store.delete(key),
            lambda: list(store.list("jobs")),
        ):
            with pytest.raises(BlobStoreUnavailable):
                call()
        store.close()


def test_a_missing_bucket_is_unavailable_not_lost(moto_endpoint: str) -> None:
    store = S3BlobStore(bucket="no-such-bucket", client=_s3_client(moto_endpoint))
    with pytest.raises(BlobStoreUnavailable, match="NoSuchBucket"):
        store.put(blob_key("x"), b"x")
    store.close()


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError")])
def test_s3_server_errors_are_transient(
    s3_bucket: tuple[str, S3Client], monkeypatch: pytest.MonkeyPatch, status: int, code: str
) -> None:
    bucket, client = s3_bucket
    store = S3BlobStore(bucket=bucket, client=client)
    failure = ClientError(
        {
            "Error": {"Code": code, "Message": "try later"},
            "ResponseMetadata": {"HTTPStatusCode": status},  # type: ignore[typeddict-item]
        },
        "GetObject",
    )

    def fail(**kwargs: object) -> None:
        raise failure

    monkeypatch.setattr(client, "get_object", fail)
    with pytest.raises(BlobStoreUnavailable, match=code):
        store.get(blob_key("x"))


def test_an_invalid_s3_prefix_is_a_config_error() -> None:
    with pytest.raises(BlobStoreConfigError):
        S3BlobStore(bucket="b", prefix="../x", client=object())  # type: ignore[arg-type]
    with pytest.raises(BlobStoreConfigError):
        S3BlobStore(bucket="", client=object())  # type: ignore[arg-type]


# --- factory ------------------------------------------------------------------------------------


@dataclass
class FakeSettings:
    blob_store: str = "folder"
    blob_dir: Path = Path("/nonexistent")
    blob_min_free_bytes: int = 0
    s3_bucket: str | None = None
    s3_prefix: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = "us-east-1"
    s3_access_key_id: str | None = "testing"
    s3_secret_access_key: SecretStr | str | None = None


def test_the_factory_opens_a_folder_store(tmp_path: Path) -> None:
    store = open_blob_store(FakeSettings(blob_dir=tmp_path / "b", blob_min_free_bytes=1024))
    assert isinstance(store, FolderBlobStore)
    assert store.describe() == f"folder:{(tmp_path / 'b').resolve()}"
    store.close()


@pytest.mark.parametrize("secret", [SecretStr("testing"), "testing"])
def test_the_factory_opens_an_s3_store(
    s3_bucket: tuple[str, S3Client], moto_endpoint: str, secret: SecretStr | str
) -> None:
    bucket, _ = s3_bucket
    settings = FakeSettings(
        blob_store="s3",
        s3_bucket=bucket,
        s3_prefix="talaria",
        s3_endpoint_url=moto_endpoint,
        s3_secret_access_key=secret,
    )
    store = open_blob_store(settings)
    key = blob_key("jobs", "j1", "a.txt")
    store.put(key, b"a")
    assert store.get(key) == b"a"
    assert store.describe() == f"s3://{bucket}/talaria/"
    store.close()


@pytest.mark.parametrize(
    "settings", [FakeSettings(blob_store="tape"), FakeSettings(blob_store="s3")]
)
def test_the_factory_refuses_incomplete_settings(settings: FakeSettings) -> None:
    with pytest.raises(BlobStoreConfigError):
        open_blob_store(settings)
