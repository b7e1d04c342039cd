"""Checkpoints on disk: sparse copies, digests, atomic commit, verification, fallback."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from vmwu.errors import HostDiskFull
from vmwu.hostfs import write_json_atomic
from vmwu.wrapper import fsutil
from vmwu.wrapper.checkpoint import CheckpointStore, CorruptCheckpoint, verify
from vmwu.wrapper.fsutil import digest, sparse_copy

GiB = 1024**3


def sparse_file(path: Path, size: int, chunks: dict[int, bytes]) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset, data in chunks.items():
            fh.seek(offset)
            fh.write(data)
    return path


def test_a_big_sparse_disk_is_copied_with_its_holes(tmp_path: Path) -> None:
    src = sparse_file(tmp_path / "disk.raw", 256 * GiB, {0: b"boot", 100 * GiB + 7: b"x" * 70000})
    size, dig = sparse_copy(src, tmp_path / "copy.raw")
    copy = tmp_path / "copy.raw"
    assert size == copy.stat().st_size == 256 * GiB
    assert copy.stat().st_blocks * 512 < 1024 * 1024  # still sparse
    with open(copy, "rb") as fh:
        assert fh.read(4) == b"boot"
        fh.seek(100 * GiB + 7)
        assert fh.read(70000) == b"x" * 70000
    assert digest(copy) == (size, dig)


def test_the_digest_depends_on_the_bytes_not_on_where_the_holes_are(tmp_path: Path) -> None:
    data = b"\0" * 200000 + b"data" + b"\0" * 300000
    dense = tmp_path / "dense"
    dense.write_bytes(data)
    sparse = sparse_file(tmp_path / "sparse", len(data), {200000: b"data"})
    assert digest(dense) == digest(sparse)
    other = sparse_file(tmp_path / "other", len(data), {200001: b"data"})
    assert digest(other) != digest(sparse)
    shorter = sparse_file(tmp_path / "shorter", len(data) - 1, {200000: b"data"})
    assert digest(shorter)[1] != digest(sparse)[1]


def test_a_full_disk_during_a_copy_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = sparse_file(tmp_path / "src", 10 * 1024 * 1024, {5: b"abc"})

    def full(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "pwrite", full)
    with pytest.raises(HostDiskFull, match="no space left"):
        sparse_copy(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_write_json_atomic(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2}, durable=False)
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def write_checkpoint(store: CheckpointStore, task: int, payload: bytes) -> Path:
    tmp = store.begin()
    (tmp / "state").write_bytes(payload)
    sparse_file(tmp / "disk-out.raw", GiB, {4096: payload})
    return store.commit(tmp, {"task": task, "warm": True}, {}).path


def test_commit_keeps_the_newest_two_and_candidates_come_newest_first(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cks", keep=2)
    paths = [write_checkpoint(store, 0, f"state {i}".encode()) for i in range(4)]
    assert [p.name for p in paths] == ["ck-000001", "ck-000002", "ck-000003", "ck-000004"]
    assert sorted(p.name for p in (tmp_path / "cks").iterdir()) == ["ck-000003", "ck-000004"]
    found = list(store.candidates(0, report=print))
    assert [ck.name for ck in found] == ["ck-000004", "ck-000003"]
    assert found[0].file("state").read_bytes() == b"state 3"
    assert found[0].manifest["warm"] is True and found[0].task == 0
    assert found[0].size > 0


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda p: (p / "state").write_bytes(b"state X"), "state does not match its digest"),
        (lambda p: os.truncate(p / "state", 3), "state has 3 bytes"),
        (lambda p: (p / "state").unlink(), "state: "),
        (lambda p: os.truncate(p / "manifest.json", 40), "manifest is unreadable"),
        (lambda p: (p / "manifest.json").unlink(), "it has no manifest"),
        (
            lambda p: (p / "manifest.json").write_text(
                (p / "manifest.json").read_text().replace('"task": 0', '"task": 1')
            ),
            "does not match its own checksum",
        ),
    ],
)
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_used(
    tmp_path: Path, damage: object, why: str
) -> None:
    store = CheckpointStore(tmp_path / "cks", keep=2)
    write_checkpoint(store, 0, b"state 1")
    newest = write_checkpoint(store, 0, b"state 2")
    damage(newest)  # type: ignore[operator]
    reports: list[str] = []
    found = list(store.candidates(0, report=reports.append))
    assert [ck.name for ck in found] == ["ck-000001"]
    assert len(reports) == 1 and reports[0].startswith("checkpoint ck-000002 is unusable")
    assert why in reports[0]
    assert not newest.exists()
    with pytest.raises(CorruptCheckpoint):
        verify(tmp_path / "cks" / "nothing")


def test_half_written_and_other_tasks_checkpoints_are_not_used(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cks", keep=3)
    write_checkpoint(store, 0, b"old task")
    write_checkpoint(store, 1, b"this task")
    partial = store.begin()
    (partial / "state").write_bytes(b"half")
    assert partial.name == "ck-000003.partial"
    assert [ck.name for ck in store.candidates(1, report=print)] == ["ck-000002"]
    assert not (tmp_path / "cks" / "ck-000001").exists()  # a finished task's, dropped
    store.clean_partial()
    assert not partial.exists()
    assert store.newest() == tmp_path / "cks" / "ck-000002"


def test_a_copy_that_does_not_match_its_source_is_not_committed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cks")
    tmp = store.begin()
    (tmp / "state").write_bytes(b"s")
    with pytest.raises(Exception, match="does not match what was copied"):
        store.commit(tmp, {"task": 0}, {"state": "0" * 64})
    assert store.newest() is None
