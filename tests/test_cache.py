"""The bounded node cache: use stamps, entries held in use, least-recently-used eviction
under a size limit, a `clean` that is safe while entries are in use, the accounting.

Entries are held from other processes (a real second `python`) and other threads, as
running instances hold them; nothing here stands in for the locks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.waits import wait_for
from vmwu.cache import Entry, Filler, NodeCache, limit_from, parse_limit
from vmwu.errors import BadInput, HostDiskFull
from vmwu.run.options import parse_run_args

KIB = 1024
SIZE = 64 * KIB  # every test entry: 64 KiB of real (non-sparse) data


def _filler(size: int = SIZE) -> Filler:
    def fill(tmp: Path) -> None:
        tmp.write_bytes(os.urandom(size))

    return fill


def insert(cache: NodeCache, key: str, size: int = SIZE) -> Path:
    return cache.ensure_blob(key, _filler(size))


def groups(cache: NodeCache) -> list[str]:
    return [e.group for e in cache.entries()]


@contextmanager
def held_elsewhere(cache: NodeCache, path: Path) -> Iterator[subprocess.Popen[str]]:
    """``path``'s entry held in use by another process until the block ends."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from vmwu.cache import NodeCache
        cache = NodeCache(Path({str(cache.root)!r}))
        with cache.in_use(Path({str(path)!r})):
            print("held", flush=True)
            sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)


# -- limits --------------------------------------------------------------------------------


def test_limit_words_and_sizes() -> None:
    assert parse_limit("none") is None
    assert parse_limit(" Unlimited ") is None
    assert parse_limit("20G") == 20 * 1024**3
    assert parse_limit("0") == 0
    with pytest.raises(ValueError):
        parse_limit("-1G")


@given(st.text(max_size=40))
def test_limit_parser_never_fails_unexpectedly(text: str) -> None:
    try:
        value = parse_limit(text)
    except ValueError:
        return
    assert value is None or value >= 0


@given(st.integers(min_value=0, max_value=2**62))
def test_limit_in_bytes_round_trips(n: int) -> None:
    assert parse_limit(str(n)) == n


def test_limit_from_option_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMWU_CACHE_LIMIT", raising=False)
    assert limit_from(None) is None  # the default: unlimited
    monkeypatch.setenv("VMWU_CACHE_LIMIT", "1M")
    assert limit_from(None) == 1024**2
    assert limit_from("2M") == 2 * 1024**2
    assert limit_from("none") is None
    monkeypatch.setenv("VMWU_CACHE_LIMIT", "lots")
    with pytest.raises(BadInput, match="VMWU_CACHE_LIMIT: bad cache limit"):
        limit_from(None)


def test_run_option_and_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMWU_CACHE_LIMIT", raising=False)
    opts, _ = parse_run_args(["u.ova", "--cache-limit", "3G"], cwd=tmp_path)
    assert opts.cache_limit == "3G"
    with pytest.raises(BadInput, match=r"command line \(--cache-limit\): bad cache limit"):
        parse_run_args(["u.ova", "--cache-limit", "3 apples"], cwd=tmp_path)
    config = tmp_path / "run.toml"
    config.write_text('cache-limit = "10X"\n')
    with pytest.raises(BadInput, match=r"run.toml:1: bad cache limit"):
        parse_run_args(["u.ova", "--config", str(config)], cwd=tmp_path)


# -- accounting ----------------------------------------------------------------------------


def test_size_counts_what_entries_take_on_disk(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", limit=None)
    insert(cache, "a" * 64)
    insert(cache, "b" * 64, 3 * SIZE)
    # what is derived from a blob belongs to its entry
    cache.ensure_derived("a" * 64 + ".vmlinux", _filler(2 * SIZE))
    sizes = {e.group: e.size for e in cache.entries()}
    assert sizes == {"a" * 64: 3 * SIZE, "b" * 64: 3 * SIZE}
    du = subprocess.run(
        ["du", "-s", "-B1", cache.root / "blobs", cache.root / "derived"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert cache.size() == sum(int(line.split()[0]) for line in du.stdout.splitlines()) - sum(
        os.stat(d).st_blocks * 512 for d in (cache.root / "blobs", cache.root / "derived")
    )


def test_instances_and_temp_files_are_not_counted(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", limit=None)
    insert(cache, "a" * 64)
    inst = cache.new_instance_dir("unit")
    (inst / "overlay").write_bytes(os.urandom(SIZE))
    (cache.root / "tmp" / "x.1.2").write_bytes(os.urandom(SIZE))
    assert cache.size() == SIZE
    cache.release_holds()


# -- least recently used -------------------------------------------------------------------


def test_lru_order_follows_use_not_insertion(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", limit=None)
    a, b, c = (insert(cache, k * 64) for k in "abc")
    assert groups(cache) == ["a" * 64, "b" * 64, "c" * 64]
    with cache.in_use(a):
        pass
    assert groups(cache) == ["b" * 64, "c" * 64, "a" * 64]
    with cache.in_use(b):
        pass
    assert groups(cache) == ["c" * 64, "a" * 64, "b" * 64]
    # a lookup that fills nothing is a use too
    insert(cache, "c" * 64)
    assert groups(cache) == ["a" * 64, "b" * 64, "c" * 64]


def test_entries_released_together_go_smallest_first(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", limit=None)
    big, small = insert(cache, "a" * 64, 4 * SIZE), insert(cache, "b" * 64)
    user = NodeCache(cache.root)
    user.hold(big)
    user.hold(small)
    user.release_holds()  # one instance's entries: used until the same moment
    assert groups(cache) == ["b" * 64, "a" * 64]
    assert len({e.last_use for e in cache.entries()}) == 1


def test_insertion_at_the_limit_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", limit=3 * SIZE)
    a, b, c = (insert(cache, k * 64) for k in "abc")
    with cache.in_use(a):
        pass  # b is now the least recently used
    d = insert(cache, "d" * 64)
    assert not b.exists()
    assert a.exists() and c.exists() and d.exists()
    assert cache.size() == 3 * SIZE
    e = insert(cache, "e" * 64)
    assert not c.exists() and e.exists()
    assert cache.size() <= 3 * SIZE


def test_eviction_removes_the_whole_entry_and_its_lock_files(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", limit=None)
    a = insert(cache, "a" * 64)
    cache.ensure_derived("a" * 64 + ".vmlinux", _filler())
    (cache.root / "derived" / ("a" * 64 + ".inspect.json")).write_text("{}")
    insert(cache, "b" * 64)
    done = cache.trim(SIZE)
    assert [e.group for e in done.removed] == ["a" * 64]
    assert not a.exists()
    assert not list((cache.root / "derived").iterdir())
    assert sorted(p.name for p in (cache.root / "locks").glob("a*")) == []
    assert not (cache.root / "locks" / "use" / ("a" * 64 + ".use")).exists()
    assert cache.size() == SIZE


def test_an_entry_in_use_elsewhere_is_never_evicted(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", limit=2 * SIZE)
    a, b = insert(cache, "a" * 64), insert(cache, "b" * 64)
    with held_elsewhere(cache, a):  # a: the least recently used, and in use
        c = insert(cache, "c" * 64)
        assert a.exists(), "an entry in use was evicted"
        assert not b.exists() and c.exists()
        d = insert(cache, "d" * 64)
        assert a.exists() and d.exists() and not c.exists()
        done = cache.trim(0)  # nothing idle left: over the limit by what is in use
        assert [e.group for e in done.removed] == ["d" * 64]
        assert [e.group for e in done.in_use] == ["a" * 64]
        assert a.exists() and cache.size() == done.size_after == SIZE
        assert [e.group for e in cache.entries() if cache.is_in_use(e)] == ["a" * 64]
    done = cache.trim(0)
    assert not a.exists() and done.size_after == cache.size() == 0


def test_an_entry_held_before_it_exists_is_not_evicted_once_filled(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", limit=SIZE)
    path = cache.blob_path("a" * 64)
    cache.hold(path)  # as an instance does before resolving its files
    insert(cache, "a" * 64)
    insert(cache, "b" * 64)
    assert path.exists()
    cache.release_holds()
    insert(cache, "c" * 64)
    assert not path.exists()


def test_an_entry_in_use_by_another_thread_is_not_evicted(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", limit=None)
    a = insert(cache, "a" * 64)
    insert(cache, "b" * 64)
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with NodeCache(cache.root).in_use(a):
            holding.set()
            done.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(30)
        removal = NodeCache(cache.root).clean()
        assert [e.group for e in removal.removed] == ["b" * 64]
        assert a.exists()
    finally:
        done.set()
        thread.join(30)


# -- clean ---------------------------------------------------------------------------------


def test_clean_keeps_what_is_in_use_and_removes_the_rest(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", limit=None)
    a = insert(cache, "a" * 64)
    state = cache.ensure_derived("warm-1234.state", _filler())
    insert(cache, "b" * 64)
    (cache.root / "downloads").mkdir()
    (cache.root / "downloads" / "k.deb").write_bytes(b"deb")
    running = NodeCache(cache.root)
    live = running.new_instance_dir("live")  # held by `running` until release_holds
    dead = cache.root / "instances" / "crashed-1-abcdef"
    dead.mkdir()
    (dead / "output.raw").write_bytes(b"x" * 100)
    stale = cache.root / "tmp" / "q.99.ab"
    stale.write_bytes(b"half")
    os.utime(stale, (0, 0))
    with held_elsewhere(cache, state), held_elsewhere(cache, a):
        done = cache.clean()
    assert a.exists() and state.exists() and live.is_dir()
    assert not (cache.root / "blobs" / ("b" * 64)).exists()
    assert not dead.exists() and not (cache.root / "downloads").exists()
    assert not stale.exists() and done.tmp_removed == 1
    kept = sorted(e.group for e in done.in_use)
    assert kept == sorted(["a" * 64, "warm-1234", f"instances/{live.name}"])
    running.release_holds()
    cache.clean()
    assert cache.entries(instances=True) == []


def test_clean_leaves_a_filler_in_progress_alone(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "c", limit=None)
    filling, finish = threading.Event(), threading.Event()

    def slow_fill(tmp: Path) -> None:
        tmp.write_bytes(os.urandom(SIZE))
        filling.set()
        assert finish.wait(30)

    result: list[Path] = []
    thread = threading.Thread(target=lambda: result.append(cache.ensure_blob("f" * 64, slow_fill)))
    thread.start()
    try:
        assert filling.wait(30)
        done = NodeCache(cache.root).clean()
        assert done.tmp_removed == 0 and [e.group for e in done.in_use] == []
    finally:
        finish.set()
        thread.join(30)
    assert result and result[0].read_bytes() and cache.size() == SIZE


def test_a_user_waits_for_a_removal_and_then_finds_the_entry_gone(tmp_path: Path) -> None:
    """The evictor holds the use file exclusively while it removes the entry, then removes
    the use file too: a user blocked on the old file must lock the new one (else a second
    evictor could remove what that user holds)."""
    import fcntl

    cache = NodeCache(tmp_path / "c", limit=None)
    a = insert(cache, "a" * 64)
    use = cache.root / "locks" / "use" / ("a" * 64 + ".use")
    fd = os.open(use, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # an evictor at work
    inode = os.fstat(fd).st_ino
    seen: list[bool] = []
    entered = threading.Event()
    release = threading.Event()

    def user() -> None:
        with cache.in_use(a):
            seen.append(a.exists())
            entered.set()
            assert release.wait(30)

    thread = threading.Thread(target=user)
    thread.start()

    def waiting() -> bool:
        text = Path("/proc/locks").read_text()
        return any("->" in line and f":{inode} " in line for line in text.splitlines())

    wait_for(waiting, 30, "the user to wait for the evictor's lock")
    a.unlink()
    use.unlink()
    os.close(fd)
    try:
        assert entered.wait(30)
        assert seen == [False]  # it waited for the removal, and found the entry gone
        # it holds the use file that is there now: an evictor cannot take the entry
        assert cache.is_in_use(Entry("a" * 64, (), 0, 0.0))
    finally:
        release.set()
        thread.join(30)
    assert not cache.is_in_use(Entry("a" * 64, (), 0, 0.0))


# -- concurrency ---------------------------------------------------------------------------


def _insert_in_process(root: str, key: str, limit: int) -> bool:
    cache = NodeCache(Path(root), limit=limit)
    path = insert(cache, key)
    return path.name == key


def test_concurrent_inserts_stay_within_the_limit(tmp_path: Path) -> None:
    root = tmp_path / "c"
    limit = 4 * SIZE
    keys = [f"{i:064x}" for i in range(16)]
    with ProcessPoolExecutor(4) as pool:
        assert all(pool.map(_insert_in_process, [str(root)] * 16, keys, [limit] * 16))
    cache = NodeCache(root, limit=limit)
    assert cache.size() <= limit
    assert len(cache.entries()) == 4
    assert not list((root / "tmp").iterdir())


def _fill_counting(root: str, key: str, log: str) -> str:
    def fill(tmp: Path) -> None:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        tmp.write_bytes(b"x" * SIZE)

    return str(NodeCache(Path(root), limit=2 * SIZE).ensure_blob(key, fill))


def test_concurrent_inserts_of_one_entry_fill_it_once(tmp_path: Path) -> None:
    root, log = tmp_path / "c", tmp_path / "fills"
    with ProcessPoolExecutor(4) as pool:
        paths = set(pool.map(_fill_counting, [str(root)] * 8, ["e" * 64] * 8, [str(log)] * 8))
    assert len(paths) == 1
    assert len(log.read_text().splitlines()) == 1


# -- the command line ----------------------------------------------------------------------


def test_vmwu_cache_commands(tmp_path: Path) -> None:
    from tests.conftest import run_vmwu

    root = tmp_path / "c"
    cache = NodeCache(root, limit=None)
    a, b = insert(cache, "a" * 64), insert(cache, "b" * 64, 2 * SIZE)
    env = {"VMWU_CACHE_DIR": str(root), "VMWU_CACHE_LIMIT": "none"}

    shown = run_vmwu("cache", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"{root}  192.0 KiB  (no limit)")
    assert "blob" in shown.stdout and "a" * 20 in shown.stdout

    nothing = run_vmwu("cache", "trim", env=env)
    assert "no cache limit set" in nothing.stdout and a.exists() and b.exists()

    with held_elsewhere(cache, b):
        info = run_vmwu("cache", "info", "--json", "--cache-limit", "100K", env=env)
        report = json.loads(info.stdout)
        assert report["limit"] == 100 * KIB and report["bytes"] == 3 * SIZE
        assert [(e["entry"], e["in_use"]) for e in report["entries"]] == [
            ("b" * 64, True),
            ("a" * 64, False),
        ]
        trimmed = run_vmwu("cache", "trim", "--cache-limit", "100K", env=env)
        assert trimmed.returncode == 0, trimmed.stderr
        assert "trim removed 1 entries (64.0 KiB), now 128.0 KiB" in trimmed.stdout
        assert "kept 1 entries in use" in trimmed.stdout
        assert not a.exists() and b.exists()
        cleaned = run_vmwu("cache", "clean", env=env)
        assert "clean removed 0 entries" in cleaned.stdout and b.exists()
    cleaned = run_vmwu("cache", "clean", env=env)
    assert "clean removed 1 entries (128.0 KiB), now 0 B" in cleaned.stdout
    assert not b.exists()

    bad = run_vmwu("cache", "trim", env={**env, "VMWU_CACHE_LIMIT": "lots"})
    assert bad.returncode == 241
    assert "VMWU_CACHE_LIMIT: bad cache limit" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_sweep_refuses_a_bad_cache_limit(tmp_path: Path) -> None:
    from tests.conftest import run_vmwu

    bad = run_vmwu("sweep", tmp_path / "p.plan", "--cache-limit", "20 G B", cwd=tmp_path)
    assert bad.returncode == 241
    assert "--cache-limit: bad cache limit" in bad.stderr


# -- a full file system --------------------------------------------------------------------


def test_a_full_file_system_evicts_idle_entries_and_retries(tmp_path: Path) -> None:
    """No limit set (the default): a fill that finds the disk full makes room from what is
    idle, least recently used first, and tries again; what is in use stays."""
    import errno

    cache = NodeCache(tmp_path / "c", limit=None)
    old, newer, held = (insert(cache, k * 64) for k in "abc")
    attempts: list[bool] = []

    def fill(tmp: Path) -> None:  # the disk has room only once `old` is gone
        attempts.append(old.exists())
        if old.exists():
            tmp.write_bytes(b"x" * 100)  # partly written, as a full disk leaves it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        tmp.write_bytes(os.urandom(SIZE))

    with held_elsewhere(cache, old), held_elsewhere(cache, newer), held_elsewhere(cache, held):
        with pytest.raises(HostDiskFull):  # all in use: nothing can make room
            cache.ensure_blob("d" * 64, fill)
    assert attempts == [True]
    assert old.exists() and newer.exists() and held.exists()
    assert not (cache.root / "blobs" / ("d" * 64)).exists()

    attempts.clear()
    with cache.in_use(newer):
        pass  # `old` is now the least recently used of the idle ones
    with held_elsewhere(cache, held):
        got = cache.ensure_blob("d" * 64, fill)
    assert attempts == [True, False]
    assert got.stat().st_size == SIZE
    assert not old.exists() and newer.exists() and held.exists()
    assert not list((cache.root / "tmp").iterdir())


def _use_repeatedly(root: str, keys: list[str], rounds: int) -> int:
    """Hold each entry, fill it if it is gone, and check that it stays whole while held;
    returns how many times an entry had to be filled again."""
    import hashlib

    cache = NodeCache(Path(root), limit=3 * SIZE)
    refills = 0
    for _ in range(rounds):
        for key in keys:
            path = cache.blob_path(key)
            with cache.in_use(path):

                def fill(tmp: Path, key: str = key) -> None:
                    tmp.write_bytes(hashlib.sha256(key.encode()).digest() * (SIZE // 32))

                refills += not path.exists()
                got = cache.ensure_blob(key, fill)
                data = got.read_bytes()
                assert data == hashlib.sha256(key.encode()).digest() * (SIZE // 32)
                assert got.exists(), "an entry vanished while held"
    return refills


def _clean_repeatedly(root: str, rounds: int) -> int:
    cache = NodeCache(Path(root), limit=None)
    return sum(len(cache.clean().removed) + len(cache.trim(SIZE).removed) for _ in range(rounds))


def test_entries_held_by_users_survive_concurrent_cleans_and_evictions(tmp_path: Path) -> None:
    root = str(tmp_path / "c")
    keys = [[f"{w}{i:063x}" for i in range(4)] for w in range(3)]
    with ProcessPoolExecutor(4) as pool:
        users = [pool.submit(_use_repeatedly, root, k, 15) for k in keys]
        cleaner = pool.submit(_clean_repeatedly, root, 40)
        refills = sum(u.result(timeout=120) for u in users)
        removed = cleaner.result(timeout=120)
    # the cleaner and the limit did remove entries, and every user got them back whole
    assert removed > 0 and refills > len(keys) * 4
    assert not list((tmp_path / "c" / "tmp").iterdir())


def test_a_layer_that_pack_reuses_is_held_until_released(tmp_path: Path) -> None:
    """`vmwu pack` with guest-packages holds the cached layer until the unit is written."""
    from vmwu.bases.catalog import BaseFile, BaseImage
    from vmwu.pack.layer import build_layer, layer_key

    base_dir = tmp_path / "base"
    (base_dir / "trusted.gpg.d").mkdir(parents=True)
    for name in ("dpkg-status", "sources.list"):
        (base_dir / name).write_text("")
    (base_dir / "debian.json").write_text("{}")
    disk = BaseFile("base-disk", base_dir / "root.qcow2", "d" * 64, 1, "qcow2")
    base = BaseImage(
        name="deb",
        location=str(base_dir),
        architecture="x86_64",
        guest_os="linux",
        sha256="e" * 64,
        files=(disk,),
    )
    cache = NodeCache(tmp_path / "c", limit=None)
    layer = cache.ensure_derived(layer_key(base, ["g++"]), _filler())
    got = build_layer(base, ["g++"], cache=cache)
    assert got == layer
    entry = next(e for e in cache.entries() if e.group.startswith("layer-"))
    assert cache.is_in_use(entry) and not NodeCache(cache.root).clean().removed
    cache.release_holds()
    assert not cache.is_in_use(entry)
    assert [e.group for e in NodeCache(cache.root).clean().removed] == [entry.group]


def test_sweep_passes_its_cache_limit_to_the_jobs(tmp_path: Path) -> None:
    from tests.conftest import run_vmwu

    plan = tmp_path / "t.plan"
    plan.write_text(
        "parameter n integer range from 1 to 2 step 1\n"
        "task main\n"
        "    node:execute printf '%s\\n' \"$VMWU_CACHE_LIMIT\" > limit.txt\n"
        "    copy node:limit.txt limit_${jobindex}.txt\n"
        "endtask\n"
    )
    env = {"VMWU_CACHE_LIMIT": "5G"}
    done = run_vmwu(
        "sweep", plan, "--results", "res", "--cache-limit", "20G", "-q", cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr
    for i in (1, 2):
        assert (tmp_path / "res" / f"limit_{i}.txt").read_text() == "20G\n"


def test_holders_learn_that_the_cache_is_over_its_limit_by_what_they_hold(
    tmp_path: Path,
) -> None:
    import time

    cache = NodeCache(tmp_path / "c", limit=2 * SIZE)
    before = time.time()
    a = insert(cache, "a" * 64)
    insert(cache, "b" * 64)
    assert not cache.pressure_since(before)  # at the limit, not over it
    with held_elsewhere(cache, a):
        insert(cache, "c" * 64)  # b goes: fits again
        assert not cache.pressure_since(before)
        with cache.in_use(cache.blob_path("c" * 64)):
            insert(cache, "d" * 64)  # a and c in use: over the limit
            assert cache.pressure_since(before)
    later = time.time()
    assert not cache.pressure_since(later)
