"""Issue 11 point 3: a unit's disk image, or an image given by an option, cannot make
qemu-img or QEMU read a host file. Every such image is inspected first
(vmwu/images/inspect.py); these tests craft the classes OpenStack's OSSA-2024-001
(CVE-2024-32498) names (a qcow2 backing file or external data file naming a host file, a
vmdk whose extents name host files, an image whose format would be probed) and check that
``vmwu run``, ``vmwu inspect``, ``--input-image``, ``--output-image`` and ``vmwu base
import`` refuse each one with one line (exit 241) before QEMU starts.

No guest boots here (the units are on a fake base); tests/integration/test_image_leak.py
boots a real guest that would print a host file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakebase import (
    BAD_INPUT,
    GOOD_SPEC,
    Home,
    Packed,
    add_fake_base,
    assert_only_status,
    one_error_line,
    pack_on_fake_base,
    write_app,
)
from tests.units import (
    rewrite_unit,
)
from vmwu import tools
from vmwu.cache import NodeCache
from vmwu.digest import file_sha256
from vmwu.errors import ExitCode, UnitError
from vmwu.images import ext4, inspect, qemu_img
from vmwu.run import resolve
from vmwu.unit.archive import write_ova
from vmwu.unit.model import FileRole
from vmwu.unit.reader import OvaReader

MiB = 1024**2


def qimg(*args: object) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


@dataclasses.dataclass(frozen=True)
class Hostile:
    """A crafted image: how a unit declares it, and what the refusal says."""

    path: Path
    declared: str
    capacity: int
    phrase: str


def secret_file(where: Path) -> tuple[Path, bytes]:
    """A host file that no guest may read: 1 MiB starting with a unique marker."""
    marker = b"VMWU-HOST-SECRET-" + secrets.token_hex(8).encode()
    path = where / "host-secret"
    path.write_bytes(marker + bytes(MiB - len(marker)))
    return path, marker


def _vmdk_descriptor(create_type: str, extent: str) -> bytes:
    return (
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        f'createType="{create_type}"\n\n# Extent description\n{extent}\n\n'
        '# The Disk Data Base\nddb.virtualHWVersion = "4"\nddb.adapterType = "ide"\n'
    ).encode()


def hostile_images(where: Path, secret: Path) -> dict[str, Hostile]:
    where.mkdir(parents=True, exist_ok=True)
    imgs: dict[str, Hostile] = {}

    backing = where / "backing.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", backing, MiB)
    imgs["qcow2-backing-file"] = Hostile(backing, "qcow2", MiB, "names a backing file")

    # without its backing format (the header extension renamed to one QEMU skips), QEMU
    # would probe the host file's format
    probed = where / "probed-backing.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", probed, MiB)
    header = bytearray(probed.read_bytes())
    at = header.index(struct.pack(">I", 0xE2792ACA))  # "backing file format name"
    header[at : at + 4] = struct.pack(">I", 0x0BADF00D)
    probed.write_bytes(bytes(header))
    imgs["qcow2-backing-probed"] = Hostile(probed, "qcow2", MiB, "names a backing file")

    data_host = where / "data-host-file"  # qemu-img create writes the data file: not the secret
    datafile = where / "datafile.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-o", f"data_file={data_host}", datafile, MiB)
    imgs["qcow2-data-file"] = Hostile(datafile, "qcow2", MiB, "names an external data file")

    flat = where / "flat.vmdk"  # a descriptor file whose extent is a host file
    flat.write_bytes(_vmdk_descriptor("monolithicFlat", f'RW 2048 FLAT "{secret}" 0'))
    imgs["vmdk-flat-extent"] = Hostile(flat, "vmdk", MiB, "vmdk descriptor is not one embedded")

    # a descriptor file naming a file beside it (no '/': OpenStack's check lets it through)
    relative = where / "relative.vmdk"
    relative.write_bytes(_vmdk_descriptor("monolithicSparse", f'RW 2048 SPARSE "{secret.name}"'))
    imgs["vmdk-relative-extent"] = Hostile(relative, "vmdk", MiB, "vmdk descriptor file")

    # a sparse vmdk whose header has no capacity: QEMU then opens the extents of its
    # embedded descriptor (here a file beside it, again without '/')
    zero = where / "zero-capacity.vmdk"
    qimg("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse", zero, MiB)
    data = bytearray(zero.read_bytes())
    desc_sector, desc_sectors = struct.unpack_from("<QQ", data, 28)
    text = _vmdk_descriptor("monolithicSparse", f'RW 2048 FLAT "{secret.name}" 0')
    assert len(text) <= desc_sectors * 512
    start = desc_sector * 512
    data[start : start + desc_sectors * 512] = text.ljust(desc_sectors * 512, b"\0")
    struct.pack_into("<Q", data, 12, 0)  # capacity
    zero.write_bytes(bytes(data))
    imgs["vmdk-capacity-0"] = Hostile(zero, "vmdk", MiB, "vmdk header has no capacity")

    raw = where / "ext4.raw"  # a raw disk declared qcow2
    ext4.make_image(raw, 4 * MiB, label="VMWU-APP")
    imgs["raw-declared-qcow2"] = Hostile(raw, "qcow2", 4 * MiB, "declared qcow2 but holds no")

    plain = where / "plain.qcow2"  # a qcow2 declared raw: only probing would read it as qcow2
    qimg("create", "-q", "-f", "qcow2", plain, 4 * MiB)
    imgs["qcow2-declared-raw"] = Hostile(
        plain, "raw", plain.stat().st_size, "holds a qcow2 image but is declared raw"
    )
    return imgs


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Hostile], bytes]:
    where = tmp_path_factory.mktemp("hostile")
    secret, marker = secret_file(where)
    return hostile_images(where / "images", secret), marker


CASES = [
    "qcow2-backing-file",
    "qcow2-backing-probed",
    "qcow2-data-file",
    "vmdk-flat-extent",
    "vmdk-relative-extent",
    "vmdk-capacity-0",
    "raw-declared-qcow2",
    "qcow2-declared-raw",
]


# -- the inspection itself ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_inspection_refuses(hostile: tuple[dict[str, Hostile], bytes], case: str) -> None:
    img = hostile[0][case]
    facts = inspect.gather(img.path)
    with pytest.raises(inspect.UnsafeImage, match=img.phrase) as err:
        inspect.check(facts, what="x", declared=img.declared, capacity=img.capacity)
    assert err.value.exit_code == ExitCode.BAD_INPUT
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("make", "fmt"),
    [
        (lambda p: qimg("create", "-q", "-f", "qcow2", p, 8 * MiB), "qcow2"),
        (
            lambda p: qimg(
                "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", p, 8 * MiB
            ),
            "vmdk",
        ),
        (lambda p: qimg("create", "-q", "-f", "vmdk", p, 8 * MiB), "vmdk"),
        (lambda p: ext4.make_image(p, 8 * MiB, label="VMWU-OUT"), "raw"),
    ],
    ids=["qcow2", "vmdk-stream-optimized", "vmdk-monolithic-sparse", "raw-ext4"],
)
def test_inspection_accepts_self_contained_images(
    tmp_path: Path, make: Callable[[Path], None], fmt: str
) -> None:
    path = tmp_path / "disk"
    make(path)
    facts = inspect.gather(path)
    assert inspect.check(facts, what="x", declared=fmt, capacity=8 * MiB) == fmt
    assert inspect.check(facts, what="x", declared=None) == fmt  # found, not probed by QEMU
    assert facts.problems == () and facts.backing is None


def test_a_packed_units_disks_pass(tmp_path: Path) -> None:
    """What vmwu pack writes (compressed qcow2 of lazily initialised ext4) is accepted."""
    raw = tmp_path / "out.raw"
    ext4.make_image(raw, 64 * MiB, label="VMWU-OUT")
    qcow = tmp_path / "out.qcow2"
    qemu_img.convert(raw, qcow, src_format="raw", dst_format="qcow2", compress=True)
    facts = inspect.gather(qcow)
    assert inspect.check(facts, what="x", declared="qcow2", capacity=64 * MiB) == "qcow2"


def test_layer_backing_file_allowed_only_as_declared(tmp_path: Path) -> None:
    """A guest-packages layer names its base disk's blob (by sha256) and nothing else."""
    base_sha = "ab" * 32
    layer = tmp_path / "layer.qcow2"
    qimg("create", "-q", "-f", "qcow2", layer, 8 * MiB)
    qimg("rebase", "-q", "-u", "-f", "qcow2", "-b", base_sha, "-F", "qcow2", layer)
    facts = inspect.gather(layer)
    assert facts.backing == (base_sha, "qcow2")
    ok = inspect.check(facts, what="x", declared="qcow2", backing=(base_sha, "qcow2"))
    assert ok == "qcow2"
    for allowed in (None, ("cd" * 32, "qcow2"), (base_sha, "raw")):
        with pytest.raises(inspect.UnsafeImage, match="names a backing file"):
            inspect.check(facts, what="x", declared="qcow2", backing=allowed)


def test_declared_capacity_and_maximum(tmp_path: Path) -> None:
    path = tmp_path / "d.qcow2"
    qimg("create", "-q", "-f", "qcow2", path, 8 * MiB)
    facts = inspect.gather(path)
    with pytest.raises(inspect.UnsafeImage, match="declares a capacity of 1048576 bytes"):
        inspect.check(facts, what="x", declared="qcow2", capacity=MiB)
    huge = tmp_path / "huge.qcow2"
    qimg("create", "-q", "-f", "qcow2", huge, "64T")
    with pytest.raises(inspect.UnsafeImage, match="over vmwu's maximum of 15.0 TiB"):
        inspect.check(inspect.gather(huge), what="x", declared="qcow2")
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    with pytest.raises(inspect.UnsafeImage, match="no capacity"):
        inspect.check(inspect.gather(empty), what="x", declared="raw")


def test_facts_records_round_trip_and_reject_other_versions(tmp_path: Path) -> None:
    facts = inspect.Facts(("qcow2",), 10, 20, (("backing_file", "x"),), ("a" * 64, "raw"))
    record = tmp_path / "r.json"
    inspect.save(record, facts)
    assert inspect.load(record) == facts
    for junk in ("", "{", "[]", '{"version": 99}', json.dumps({"version": 1})):
        record.write_text(junk)
        assert inspect.load(record) is None
    assert inspect.load(tmp_path / "missing.json") is None


def test_qemu_img_info_is_told_the_format(tmp_path: Path) -> None:
    """A raw disk whose bytes are a qcow2 header naming a host file (what a guest can write
    to its own raw output disk) stays raw: qemu-img info never probes."""
    evil = tmp_path / "evil.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", evil, MiB)
    info = qemu_img.info(evil, "raw")
    assert info["format"] == "raw" and "backing-filename" not in info


def test_limits_apply_in_the_child() -> None:
    spin = ["sh", "-c", "while :; do :; done"]
    proc = tools.run(spin, check=False, limits=tools.Limits(cpu_seconds=1), timeout=60)
    assert proc.returncode < 0  # SIGXCPU (or SIGKILL at the hard limit)
    grow = ["python3", "-c", "b = bytearray(512 * 1024 * 1024)"]
    proc = tools.run(grow, check=False, limits=tools.Limits(address_space=256 * MiB))
    assert proc.returncode != 0 and b"MemoryError" in proc.stderr
    assert tools.run(grow, check=False).returncode == 0  # and only there


# -- through the command line ---------------------------------------------------------------


@pytest.fixture(scope="module")
def unit_home(tmp_path_factory: pytest.TempPathFactory) -> Packed:
    return pack_on_fake_base(tmp_path_factory.mktemp("unit"))


def no_marker(marker: bytes, *where: Path) -> None:
    for root in (w for w in where if w.exists()):
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert marker not in path.read_bytes(), path


@pytest.mark.parametrize("role", [FileRole.APP_DISK, FileRole.OUTPUT_DISK])
@pytest.mark.parametrize("case", CASES)
def test_run_and_inspect_refuse_a_hostile_unit(
    unit_home: Packed,
    hostile: tuple[dict[str, Hostile], bytes],
    tmp_path: Path,
    case: str,
    role: FileRole,
) -> None:
    img = hostile[0][case]
    evil = rewrite_unit(
        unit_home.unit, tmp_path / "evil.ova", role, img.path, img.declared, img.capacity
    )
    home = unit_home.home.at(tmp_path)
    result = home("run", evil, "--quiet", "--output-directory", tmp_path / "out")
    line = one_error_line(result, BAD_INPUT, f"{role} ", "is refused", img.phrase)
    assert "evil.ova" in line
    assert_only_status(tmp_path / "out", result)
    result = home("inspect", evil)
    one_error_line(result, BAD_INPUT, f"{role} ", "is refused", img.phrase)
    result = home("extract", evil, tmp_path / "dest", "--component", role.value)
    one_error_line(result, BAD_INPUT, f"{role} ", "is refused", img.phrase)
    no_marker(hostile[1], tmp_path / "out", home.cache, tmp_path / "dest")


@pytest.mark.parametrize("option", ["--input-image", "--output-image"])
@pytest.mark.parametrize("case", CASES)
def test_run_refuses_a_hostile_image_option(
    unit_home: Packed,
    hostile: tuple[dict[str, Hostile], bytes],
    tmp_path: Path,
    case: str,
    option: str,
) -> None:
    img = hostile[0][case]
    if img.declared == "raw" or case == "raw-declared-qcow2":
        pytest.skip("an option declares no format: the image is taken for what it is")
    home = unit_home.home.at(tmp_path)
    out = tmp_path / "out"
    result = home("run", unit_home.unit, "--quiet", "--output-directory", out, option, img.path)
    one_error_line(result, BAD_INPUT, f"{option} {img.path} is refused", img.phrase)
    assert_only_status(out, result)
    no_marker(hostile[1], out, home.cache)


@pytest.mark.parametrize("case", CASES)
def test_base_import_refuses_a_hostile_image(
    hostile: tuple[dict[str, Hostile], bytes], tmp_path: Path, case: str
) -> None:
    img = hostile[0][case]
    home = Home(tmp_path / "vmwu-home", tmp_path)
    result = home("base", "import", img.path, "--name", "evil", "--format", img.declared, "-q")
    one_error_line(result, BAD_INPUT, f"the image {img.path} is refused", img.phrase)
    assert "evil" not in home("base", "list").stdout


def test_base_add_refuses_a_hostile_disk(
    hostile: tuple[dict[str, Hostile], bytes], tmp_path: Path
) -> None:
    img = hostile[0]["qcow2-backing-file"]
    home = Home(tmp_path / "vmwu-home", tmp_path)
    result = home("base", "add", "evil", img.path)
    one_error_line(result, BAD_INPUT, "is refused", img.phrase)


# -- the node cache --------------------------------------------------------------------------


def _member_offset(unit: Path, href: str) -> int:
    with tarfile.open(unit) as tar:
        return tar.getmember(href).offset_data


def test_a_corrupt_member_is_refused_even_when_the_cache_has_its_content(
    tmp_path: Path,
) -> None:
    """Issue 11 point 7: the same unit gets the same answer on every node."""
    home = Home(tmp_path / "vmwu-home", tmp_path)
    add_fake_base(home)
    write_app(tmp_path)
    (tmp_path / "u.toml").write_text(GOOD_SPEC)
    assert home("pack", "u.toml", "-q", "-o", tmp_path / "u.ova").returncode == 0
    unit = tmp_path / "u.ova"
    first = home("run", unit, "--quiet", "--output-directory", tmp_path / "o1")
    assert first.returncode == ExitCode.VM_CRASHED  # the fake kernel does not boot
    with OvaReader(unit) as reader:
        app = reader.descriptor.file(FileRole.APP_DISK)
    assert app is not None and (home.cache / "blobs" / app.sha256).exists()
    data = bytearray(unit.read_bytes())
    data[_member_offset(unit, app.href) + 1000] ^= 0xFF
    corrupt = tmp_path / "corrupt.ova"
    corrupt.write_bytes(bytes(data))
    for out in ("o2", "o3"):  # and again, from the cache that now knows the unit file
        result = home("run", corrupt, "--quiet", "--output-directory", tmp_path / out)
        one_error_line(result, BAD_INPUT, "manifest mismatch for", app.href)
    # this node, where the cache holds the content, answers as an empty cache does
    empty = Home(tmp_path / "other-home", tmp_path)
    add_fake_base(empty)
    result = empty("run", corrupt, "--quiet", "--output-directory", tmp_path / "o4")
    one_error_line(result, BAD_INPUT, "manifest mismatch for", app.href)


def test_a_member_cached_meanwhile_by_another_vmwu_is_still_verified(
    unit_home: Packed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: the cache has no blob for a member when the unit is checked, another vmwu
    (with another unit of the same content) adds it before this one extracts it."""
    cache = NodeCache(tmp_path / "cache")
    with OvaReader(unit_home.unit) as reader:  # the content, from the good unit
        resolve.resolve_files(reader.descriptor, reader, cache, unit_home.home.catalog)
        app = reader.descriptor.file(FileRole.APP_DISK)
    assert app is not None
    data = bytearray(unit_home.unit.read_bytes())
    data[_member_offset(unit_home.unit, app.href) + 1000] ^= 0xFF
    corrupt = tmp_path / "corrupt.ova"
    corrupt.write_bytes(bytes(data))
    monkeypatch.setattr(NodeCache, "blob", lambda self, sha: None)  # "not there yet"
    with OvaReader(corrupt) as reader, pytest.raises(UnitError, match="manifest mismatch"):
        resolve.resolve_files(reader.descriptor, reader, cache, unit_home.home.catalog)
    assert len(list((tmp_path / "cache" / "derived").glob("verified-*"))) == 1  # the good one


def test_a_verified_unit_is_not_hashed_again_until_it_changes(
    unit_home: Packed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = NodeCache(tmp_path / "cache")
    unit = tmp_path / "u.ova"
    unit.write_bytes(unit_home.unit.read_bytes())
    hashed: list[str] = []
    original = OvaReader.verify_member

    def counting(self: OvaReader, href: str) -> None:
        hashed.append(href)
        original(self, href)

    monkeypatch.setattr(OvaReader, "verify_member", counting)

    def resolve_once() -> None:
        with OvaReader(unit) as reader:
            resolve.resolve_files(reader.descriptor, reader, cache, unit_home.home.catalog)

    resolve_once()  # cold cache: extracting verifies, nothing to hash twice
    assert hashed == []
    resolve_once()  # the same file, verified before: nothing hashed
    assert hashed == []
    os.utime(unit)  # any change to the file (here its times) and it is verified again
    resolve_once()
    assert sorted(hashed) == ["u-app.qcow2", "u-output.qcow2"]


def test_a_blob_from_an_older_vmwu_is_inspected_at_first_use(
    hostile: tuple[dict[str, Hostile], bytes], tmp_path: Path
) -> None:
    """A cache filled before inspection existed has blobs without facts: each is inspected
    the first time it is used, and refused like a new one."""
    img = hostile[0]["qcow2-backing-file"]
    cache = NodeCache(tmp_path / "cache")
    sha, _size = file_sha256(img.path)
    blob = cache.ensure_blob(sha, lambda tmp: tmp.write_bytes(img.path.read_bytes()))
    record = cache.derived_path(f"{sha}.inspect.json")
    assert not record.exists()
    facts = resolve._facts(cache, sha, blob)
    assert record.exists() and inspect.load(record) == facts
    with pytest.raises(inspect.UnsafeImage, match="names a backing file"):
        inspect.check(facts, what="x", declared="qcow2")


def test_a_new_blob_comes_with_its_facts(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path / "cache")
    src = tmp_path / "d.qcow2"
    qimg("create", "-q", "-f", "qcow2", src, 8 * MiB)
    sha, _size = file_sha256(src)
    blob = resolve._blob(cache, sha, lambda tmp: tmp.write_bytes(src.read_bytes()), disk=True)
    assert inspect.load(cache.derived_path(f"{sha}.inspect.json")) == inspect.gather(blob)
    kernel = resolve._blob(cache, "0" * 64, lambda tmp: tmp.write_bytes(b"k"), disk=False)
    assert kernel.exists() and not cache.derived_path(f"{'0' * 64}.inspect.json").exists()


def test_a_warm_run_does_not_import_the_inspector(tmp_path: Path) -> None:
    """Once the cache knows a unit's blobs and file, ``vmwu run`` reads the remembered facts
    and never imports oslo.utils (~0.24 s here); a cold cache does."""
    home = Home(tmp_path / "vmwu-home", tmp_path)
    add_fake_base(home)
    write_app(tmp_path)
    (tmp_path / "u.toml").write_text(GOOD_SPEC)
    assert home("pack", "u.toml", "-q", "-o", tmp_path / "u.ova").returncode == 0

    def imports(out: str) -> str:
        argv = [sys.executable, "-X", "importtime", "-m", "vmwu", "run", tmp_path / "u.ova"]
        argv += ["--quiet", "--output-directory", tmp_path / out]
        env = {**os.environ, **home.env}
        proc = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == ExitCode.VM_CRASHED, proc.stderr  # the fake kernel
        return proc.stderr

    assert "oslo_utils.imageutils.format_inspector" in imports("o1")
    assert "oslo_utils" not in imports("o2")


def test_a_unit_asking_for_more_memory_than_the_node_has_is_refused(
    unit_home: Packed, tmp_path: Path
) -> None:
    # A unit from elsewhere declaring 1 PiB of guest memory: QEMU maps it lazily and the
    # guest could fill the node's memory; refused before anything starts.
    with OvaReader(unit_home.unit) as reader:
        desc = reader.descriptor
        members: dict[str, Path] = {}
        for f in desc.files:
            if f.embedded:
                members[f.href] = tmp_path / f"src-{f.href}"
                reader.extract(f.href, members[f.href])
    evil = tmp_path / "greedy.ova"
    write_ova(evil, dataclasses.replace(desc, memory_mib=2**30), members)
    home = unit_home.home.at(tmp_path)
    result = home("run", evil, "--quiet", "--output-directory", tmp_path / "out")
    line = one_error_line(result, BAD_INPUT, "greedy.ova asks for 1073741824 MiB", "--vmm-memory")
    assert "more than this node's" in line
    # the user's own --vmm-memory is trusted as given
    result = home(
        "run", evil, "--quiet", "--vmm-memory", "64", "--output-directory", tmp_path / "out2"
    )
    assert "asks for" not in result.stderr
