"""Checkpoints of VM tasks on disk: written atomically, verified before use.

Layout, under the wrapper's directory in the slot::

    checkpoints/ck-000007/          a complete checkpoint
        manifest.json               what it is, and the size and digest of every file
        state                       the VM's memory and device state (a migration stream)
        disk-app.qcow2 ...          copies of the instance disks, taken while paused
    checkpoints/ck-000008.partial/  one being written (ignored, and removed on restart)

A checkpoint is written into ``*.partial``, every file fsynced, its digests recomputed
from what landed on disk, the manifest written last, and the directory renamed into
place; only then are older checkpoints dropped (the newest ``keep`` stay, so that a
checkpoint found corrupt later still has a predecessor). On restart the newest checkpoint
whose manifest and files all verify is used; others are reported and removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmwu.errors import HostFailure
from vmwu.hostfs import write_json_atomic
from vmwu.wrapper.fsutil import digest, fsync_dir

log = logging.getLogger(__name__)

FORMAT = "vmwu-wrap-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
_NAME = re.compile(r"ck-(\d{6,})\Z")


class CorruptCheckpoint(Exception):
    """A checkpoint that must not be used (the message says why)."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seq(self) -> int:
        return int(self.manifest["seq"])

    @property
    def task(self) -> int:
        return int(self.manifest["task"])

    @property
    def created(self) -> float:
        return float(self.manifest["created"])

    @property
    def size(self) -> int:
        """Bytes of data held (sparse files count what they hold, not their length)."""
        total = 0
        for entry in self.path.iterdir():
            total += entry.stat().st_blocks * 512
        return total

    def file(self, name: str) -> Path:
        return self.path / name


def _checksum(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def verify(path: Path) -> Checkpoint:
    """The checkpoint in ``path`` if its manifest and every file check out; else raise
    :class:`CorruptCheckpoint` saying what is wrong."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CorruptCheckpoint("it has no manifest") from None
    except (OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"its manifest is unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptCheckpoint("its manifest is not a vmwu checkpoint manifest")
    if manifest.get("version") != VERSION:
        raise CorruptCheckpoint(f"its manifest has version {manifest.get('version')!r}")
    if manifest.get("checksum") != _checksum(manifest):
        raise CorruptCheckpoint("its manifest does not match its own checksum")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise CorruptCheckpoint("its manifest lists no files")
    for name, want in files.items():
        try:
            size, got = digest(path / name)
        except HostFailure as exc:
            raise CorruptCheckpoint(f"{name}: {exc.message}") from None
        if size != want.get("size"):
            raise CorruptCheckpoint(f"{name} has {size} bytes, the manifest says {want['size']}")
        if got != want.get("digest"):
            raise CorruptCheckpoint(f"{name} does not match its digest")
    return Checkpoint(path, manifest)


class CheckpointStore:
    """The checkpoints of one job, in ``root``."""

    def __init__(self, root: Path, *, keep: int = 2) -> None:
        self.root = root
        self.keep = max(1, keep)

    def _complete(self) -> list[Path]:
        """Complete checkpoint directories, newest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def newest(self) -> Path | None:
        """The newest complete checkpoint directory (not verified)."""
        done = self._complete()
        return done[0] if done else None

    def clean_partial(self) -> None:
        """Remove checkpoints left half-written by a wrapper that was killed."""
        if self.root.is_dir():
            for p in self.root.glob("*.partial"):
                shutil.rmtree(p, ignore_errors=True)

    def begin(self) -> Path:
        """A fresh directory to write the next checkpoint into."""
        done = self._complete()
        seq = int(_NAME.match(done[0].name).group(1)) + 1 if done else 1  # type: ignore[union-attr]
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"ck-{seq:06d}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        return tmp

    def abort(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, tmp: Path, meta: Mapping[str, Any], expect: Mapping[str, str]) -> Checkpoint:
        """Seal the checkpoint written into ``tmp``: digest every file (each must match
        ``expect``, the digests of the sources it was copied from, where given), write the
        manifest, rename it into place, then drop the checkpoints beyond ``keep``."""
        files: dict[str, dict[str, Any]] = {}
        for entry in sorted(tmp.iterdir()):
            size, dig = digest(entry)
            if entry.name in expect and expect[entry.name] != dig:
                raise HostFailure(f"checkpoint copy {entry} does not match what was copied")
            files[entry.name] = {"size": size, "digest": dig}
        seq = int(tmp.name.split(".")[0].removeprefix("ck-"))
        manifest = {
            **meta,
            "format": FORMAT,
            "version": VERSION,
            "seq": seq,
            "created": meta.get("created", time.time()),
            "files": files,
        }
        manifest["checksum"] = _checksum(manifest)
        write_json_atomic(tmp / MANIFEST, manifest, durable=True)
        final = self.root / f"ck-{seq:06d}"
        os.replace(tmp, final)
        fsync_dir(self.root)
        for old in self._complete()[self.keep :]:
            shutil.rmtree(old, ignore_errors=True)
        return Checkpoint(final, manifest)

    def candidates(self, task: int, report: Callable[[str], None]) -> Iterator[Checkpoint]:
        """The good checkpoints of ``task``, newest first, each verified when reached.
        Corrupt ones, and those of other tasks (left over from a task that finished), are
        removed; corrupt ones are reported."""
        for path in self._complete():
            try:
                ck = verify(path)
            except CorruptCheckpoint as exc:
                report(f"checkpoint {path.name} is unusable, removing it: {exc}")
                shutil.rmtree(path, ignore_errors=True)
                continue
            if ck.task != task:
                shutil.rmtree(path, ignore_errors=True)
                continue
            yield ck

    def drop(self, ck: Checkpoint) -> None:
        shutil.rmtree(ck.path, ignore_errors=True)

    def drop_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
