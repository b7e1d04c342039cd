"""The base catalog (thesis 5.2.3) and architecture/OS matching, on tmp_path catalogs."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from vmwu.arch import canonical_arch, guest_can_run, os_matches, parse_os, qemu_system_binary
from vmwu.bases.catalog import (
    BaseFile,
    BaseImage,
    Catalog,
    base_identity,
    choose_base,
    format_choices,
)
from vmwu.errors import BadInput, BaseNotFound
from vmwu.guest.protocol import AGENT_VERSION
from vmwu.unit.model import BootMethod, FileRole

MakeBase = Callable[..., BaseImage]


def _file(path: Path, role: FileRole, content: bytes, fmt: str) -> BaseFile:
    path.write_bytes(content)
    return BaseFile(
        role=role.value,
        path=path,
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        format=fmt,
    )


@pytest.fixture
def make_base(tmp_path: Path) -> MakeBase:
    """A base with small fake files: a kernel + initrd (direct boot), or one disk."""

    def make(
        name: str,
        arch: str = "x86_64",
        guest_os: str = "linux6.1",
        *,
        disk: bool = False,
        content: bytes | None = None,
        description: str = "",
    ) -> BaseImage:
        where = tmp_path / "bases" / name
        where.mkdir(parents=True, exist_ok=True)
        seed = content if content is not None else name.encode()
        if disk:
            files: tuple[BaseFile, ...] = (
                _file(where / "disk.qcow2", FileRole.BASE_DISK, b"disk " + seed, "qcow2"),
            )
            boot, fmt, location = BootMethod.DISK, "qcow2", where / "disk.qcow2"
        else:
            files = (
                _file(where / "kernel", FileRole.KERNEL, b"kernel " + seed, "bzimage"),
                _file(where / "initrd.img", FileRole.INITRD, b"initrd " + seed, "cpio"),
            )
            boot, fmt, location = BootMethod.DIRECT_KERNEL, "direct-kernel", where
        return BaseImage(
            name=name,
            description=description,
            location=str(location),
            architecture=arch,
            guest_os=guest_os,
            sha256=base_identity(files),
            format=fmt,
            boot_method=boot.value,
            cmdline="console=ttyS0" if not disk else "",
            files=files,
        )

    return make


@pytest.fixture
def cat(tmp_path: Path) -> Catalog:
    return Catalog.open(tmp_path / "db" / "catalog.sqlite")


# -- arch / os ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "canon"),
    [
        ("amd64", "x86_64"),
        ("X86_64", "x86_64"),
        ("x86-64", "x86_64"),
        ("x64", "x86_64"),
        ("x86", "i386"),
        ("i686", "i386"),
        ("ia32", "i386"),
        ("arm64", "aarch64"),
        ("armhf", "arm"),
        ("armv7l", "arm"),
        ("riscv64", "riscv64"),
        ("ppc64le", "ppc64le"),
        ("s390x", "s390x"),
    ],
)
def test_canonical_arch(alias: str, canon: str) -> None:
    assert canonical_arch(alias) == canon


def test_unknown_arch_lists_known_names() -> None:
    with pytest.raises(BadInput, match="unknown architecture 'sparc'.*x86_64.*aarch64"):
        canonical_arch("sparc")


def test_guest_can_run() -> None:
    assert guest_can_run("x86", "amd64")
    assert guest_can_run("amd64", "x86_64")
    assert not guest_can_run("x86_64", "i386")
    assert not guest_can_run("aarch64", "x86_64")
    assert not guest_can_run("armhf", "aarch64")


def test_qemu_system_binary() -> None:
    assert qemu_system_binary("i686") == "qemu-system-x86_64"
    assert qemu_system_binary("arm64") == "qemu-system-aarch64"


@pytest.mark.parametrize(
    ("app", "guest", "ok"),
    [
        ("linux2.6", "linux6.1", True),
        ("linux6.1", "linux6.1", True),
        ("linux6.1", "linux2.6", False),
        ("linux6", "linux6.1", True),
        ("linux6.1.0", "linux6.1", True),
        ("Linux", "linux2.6", True),
        ("linux", "linux", True),
        ("linux2.6", "linux", False),
        ("", "freebsd13", True),
        ("linux2.6", "freebsd13", False),
        ("freebsd13", "freebsd14.1", True),
        ("linux-6.1", "linux6.1", True),
    ],
)
def test_os_matches(app: str, guest: str, ok: bool) -> None:
    assert os_matches(app, guest) is ok


def test_parse_os_rejects_garbage() -> None:
    assert parse_os("linux2.6") == ("linux", (2, 6))
    with pytest.raises(BadInput, match="bad operating system name '2.6'"):
        parse_os("2.6")


# -- add / get / list / remove ----------------------------------------------------------------


def test_missing_catalog_reads_empty(cat: Catalog) -> None:
    assert cat.list() == []
    assert cat.find("x86_64", "linux") == []
    assert cat.find_file("0" * 64) is None
    assert not cat.path.exists()


def test_add_get_list_remove(cat: Catalog, make_base: MakeBase) -> None:
    tiny = cat.add(make_base("tiny", "amd64"))
    deb = cat.add(make_base("deb12", disk=True))
    assert cat.path.is_file()
    assert (tiny.id, deb.id) == (1, 2)
    assert tiny.architecture == "x86_64"  # stored canonical
    assert tiny.date_added and tiny.size == sum(f.size for f in tiny.files)
    assert tiny.boot_method == BootMethod.DIRECT_KERNEL
    got = cat.get("tiny")
    assert got == tiny
    kernel = got.file(FileRole.KERNEL)
    assert kernel is not None and kernel.path.read_bytes() == b"kernel tiny"
    assert got.file("base-disk") is None
    assert [b.name for b in cat.list()] == ["tiny", "deb12"]
    assert cat.exists("deb12")
    assert got.to_dict()["files"][0]["role"] in ("initrd", "kernel")

    removed = cat.remove("tiny")
    assert removed.name == "tiny"
    assert [b.name for b in cat.list()] == ["deb12"]
    assert not cat.exists("tiny")
    assert cat.find_file(kernel.sha256) is None
    with pytest.raises(BaseNotFound, match="no base 'tiny'"):
        cat.remove("tiny")
    # ids are never reused: a listed ID always names the same base
    assert cat.add(make_base("tiny")).id == 3


def test_agent_version_is_stored_as_before(cat: Catalog, make_base: MakeBase) -> None:
    """The column keeps its text ("1", "none"; "" in old rows, read as this vmwu's agent);
    Python sees an int, or None for an image without the vmwu agent."""
    cat.add(make_base("tiny"))
    cat.add(replace(make_base("imported", disk=True), agent_version=None))
    with sqlite3.connect(cat.path) as db:
        texts = dict(db.execute("SELECT name, agent_version FROM bases").fetchall())
        assert texts == {"tiny": str(AGENT_VERSION), "imported": "none"}
        db.execute("UPDATE bases SET agent_version = '' WHERE name = 'tiny'")
    assert cat.get("tiny").agent_version == AGENT_VERSION
    assert cat.get("imported").agent_version is None
    assert cat.get("imported").to_dict()["agent_version"] == "none"  # base show --json


def test_a_garbage_agent_version_in_the_catalog_is_one_line(
    cat: Catalog, make_base: MakeBase
) -> None:
    cat.add(make_base("tiny"))
    with sqlite3.connect(cat.path) as db:
        db.execute("UPDATE bases SET agent_version = 'v1' WHERE name = 'tiny'")
    with pytest.raises(BadInput) as err:
        cat.get("tiny")
    assert str(err.value) == (
        "base 'tiny' in the catalog: agent version 'v1' is neither a number nor 'none' "
        "(point --catalog or VMWU_CATALOG at another file, or move this one away)"
    )


def test_duplicate_name_and_replace(cat: Catalog, make_base: MakeBase) -> None:
    first = cat.add(make_base("tiny"))
    with pytest.raises(BadInput) as err:
        cat.add(make_base("tiny"))
    assert str(err.value) == f"base 'tiny' already exists in {cat.path} (use --replace)"
    new = cat.add(make_base("tiny", guest_os="linux6.12", content=b"v2"), replace=True)
    assert new.id == first.id
    assert new.guest_os == "linux6.12" and new.sha256 != first.sha256
    assert len(cat.list()) == 1
    assert cat.find_file(first.sha256) is None


def test_add_validates(cat: Catalog, make_base: MakeBase) -> None:
    base = make_base("tiny")
    with pytest.raises(BadInput, match="not the identity"):
        cat.add(replace(base, sha256="a" * 64))
    with pytest.raises(BadInput, match="digits"):
        cat.add(replace(base, name="42"))
    with pytest.raises(BadInput, match="unknown architecture"):
        cat.add(replace(base, architecture="vax"))
    with pytest.raises(BadInput, match="operating system"):
        cat.add(replace(base, guest_os="???"))
    disk_only = make_base("d", disk=True)
    with pytest.raises(BadInput, match="needs a kernel"):
        cat.add(replace(disk_only, boot_method="direct-kernel"))
    with pytest.raises(BadInput, match="boot method"):
        replace(base, boot_method="pxe")
    with pytest.raises(BadInput, match="role"):
        BaseFile(role="app-disk", path=Path("x"), sha256="0" * 64, size=0, format="raw")
    assert cat.list() == []


def test_get_by_id_and_sha_prefix(cat: Catalog, make_base: MakeBase) -> None:
    tiny = cat.add(make_base("tiny"))
    deb = cat.add(make_base("deb12", disk=True))
    assert cat.get("2") == deb
    assert cat.get(1) == tiny
    assert cat.get(tiny.sha256[:8]) == tiny
    assert cat.get("sha256:" + deb.sha256.upper()) == deb
    assert cat.by_sha256(deb.sha256) == deb
    kernel = tiny.file(FileRole.KERNEL)
    assert kernel is not None
    assert cat.by_sha256(kernel.sha256) == tiny  # a registered file finds its base
    assert cat.by_sha256("f" * 64) is None


def test_ambiguous_sha_prefix(cat: Catalog, make_base: MakeBase) -> None:
    # two single-disk bases whose identities (the disk's sha256) share 4 hex digits
    seen: dict[str, int] = {}
    for i in range(100_000):
        prefix = hashlib.sha256(b"disk " + str(i).encode()).hexdigest()[:4]
        if prefix in seen:
            break
        seen[prefix] = i
    a = cat.add(make_base("a", disk=True, content=str(seen[prefix]).encode()))
    b = cat.add(make_base("b", disk=True, content=str(i).encode()))
    assert a.sha256[:4] == b.sha256[:4] == prefix
    with pytest.raises(
        BadInput, match=f"sha256 prefix '{prefix}' matches several bases in .*: a \\("
    ):
        cat.get(prefix)
    assert cat.get(b.sha256[:12]) == b
    with pytest.raises(BaseNotFound):
        cat.get(prefix[:3])  # shorter than 4 digits: not taken as a prefix


def test_ambiguous_sha_prefix_is_bad_input(cat: Catalog, make_base: MakeBase) -> None:
    # two bases registered on the same files share their identity
    base = make_base("one", disk=True)
    cat.add(base)
    cat.add(replace(base, name="two"))
    with pytest.raises(BadInput, match="matches several bases.*one.*two"):
        cat.get(base.sha256[:12])
    found = cat.by_sha256(base.sha256)
    assert found is not None and found.name == "one"


def test_missing_base_lists_what_exists(cat: Catalog, make_base: MakeBase) -> None:
    with pytest.raises(BaseNotFound, match="the catalog is empty") as empty:
        cat.get("foo")
    assert "vmwu base build tiny" in str(empty.value)
    cat.add(make_base("tiny"))
    cat.add(make_base("deb12", disk=True))
    with pytest.raises(BaseNotFound) as err:
        cat.get("foo")
    assert str(err.value) == (
        f"no base 'foo' in {cat.path}; it has: tiny (x86_64, linux6.1), deb12 (x86_64, linux6.1)"
    )
    assert "\n" not in str(err.value)


# -- find / choose ---------------------------------------------------------------------------


def test_find_with_aliases(cat: Catalog, make_base: MakeBase) -> None:
    cat.add(make_base("arm", "arm64"))
    cat.add(make_base("x64", "amd64"))
    cat.add(make_base("x32", "i686", "linux2.6"))
    assert [b.name for b in cat.find("x86", "linux2.6")] == ["x32", "x64"]  # exact arch first
    assert [b.name for b in cat.find("amd64", "linux")] == ["x64"]
    assert [b.name for b in cat.find("x86_64", "linux")] == ["x64"]
    assert [b.name for b in cat.find("aarch64", "linux")] == ["arm"]
    assert cat.find("aarch64", "freebsd13") == []
    assert [b.name for b in cat.find("x86", "linux6.1")] == ["x64"]
    with pytest.raises(BadInput, match="unknown architecture"):
        cat.find("vax", "linux")


def test_find_os(cat: Catalog, make_base: MakeBase) -> None:
    cat.add(make_base("tiny", guest_os="linux6.1"))
    cat.add(make_base("bsd", guest_os="freebsd13"))
    assert [b.name for b in cat.find("x86_64", "linux2.6")] == ["tiny"]
    assert [b.name for b in cat.find("x86_64", "freebsd12")] == ["bsd"]
    assert cat.find("x86_64", "freebsd14") == []
    assert [b.name for b in cat.find("x86_64", "")] == ["tiny", "bsd"]


@pytest.fixture
def three(cat: Catalog, make_base: MakeBase) -> Catalog:
    cat.add(make_base("ubuntu", "x86", "linux2.6", description="U:auto P:auto"))
    cat.add(make_base("other", "aarch64"))
    cat.add(make_base("dsl", "x86", "linux2.6", description="Damn Small Linux"))
    return cat


def _asker(answers: list[str], prompts: list[str]) -> Callable[[str], str]:
    def ask(prompt: str) -> str:
        prompts.append(prompt)
        if not answers:
            raise EOFError
        return answers.pop(0)

    return ask


def test_choose_non_interactive_first_match(three: Catalog) -> None:
    out = io.StringIO()
    chosen = choose_base(three, "x86", "linux2.6", interactive=False, ask=_asker([], []), out=out)
    assert chosen.name == "ubuntu"
    assert out.getvalue() == ""


def test_choose_interactive_valid_id(three: Catalog) -> None:
    out, prompts = io.StringIO(), list[str]()
    chosen = choose_base(
        three, "x86", "linux2.6", interactive=True, ask=_asker(["3"], prompts), out=out
    )
    assert chosen.name == "dsl"
    assert prompts == ["Enter ID of selected base [1]: "]
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["ID", "NAME", "ARCH", "OS", "FS", "DESCRIPTION"]
    assert lines[1].split() == ["1", "ubuntu", "i386", "linux2.6", "ext4", "U:auto", "P:auto"]
    assert lines[2].split()[:2] == ["3", "dsl"]
    assert len(lines) == 3  # the aarch64 base is not offered


def test_choose_interactive_empty_takes_first(three: Catalog) -> None:
    chosen = choose_base(
        three, "x86", "linux2.6", interactive=True, ask=_asker([""], []), out=io.StringIO()
    )
    assert chosen.name == "ubuntu"


def test_choose_interactive_garbage_then_valid(three: Catalog) -> None:
    out, prompts = io.StringIO(), list[str]()
    ask = _asker(["x", "2", "dsl"], prompts)  # 2 exists but is not offered
    chosen = choose_base(three, "x86", "linux2.6", interactive=True, ask=ask, out=out)
    assert chosen.name == "dsl"
    assert len(prompts) == 3
    assert "'x' is not one of the listed IDs (1, 3)" in out.getvalue()


def test_choose_interactive_gives_up(three: Catalog) -> None:
    with pytest.raises(BadInput, match="after 3 answers"):
        choose_base(
            three, "x86", "", interactive=True, ask=_asker(["a", "b", "c"], []), out=io.StringIO()
        )
    with pytest.raises(BadInput, match="end of input"):
        choose_base(three, "x86", "", interactive=True, ask=_asker([], []), out=io.StringIO())


def test_choose_no_match_is_one_line(three: Catalog, tmp_path: Path) -> None:
    with pytest.raises(BaseNotFound) as err:
        choose_base(three, "riscv64", "linux", interactive=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (
        f"no base in {three.path} can run a riscv64 linux application; it has: "
        "ubuntu (i386, linux2.6), other (aarch64, linux6.1), dsl (i386, linux2.6)"
    )
    empty = Catalog.open(tmp_path / "empty.sqlite")
    with pytest.raises(BaseNotFound, match="is empty.*vmwu base build tiny"):
        choose_base(empty, "x86_64", "linux", interactive=True)


def test_format_choices_flattens_descriptions(make_base: MakeBase) -> None:
    text = format_choices([replace(make_base("a"), id=7, description="x\ny")])
    assert text.splitlines()[1].endswith("x y")


# -- files, identity ---------------------------------------------------------------------------


def test_find_file_by_sha256(cat: Catalog, make_base: MakeBase) -> None:
    base = cat.add(make_base("deb12", disk=True))
    disk = base.file(FileRole.BASE_DISK)
    assert disk is not None
    assert cat.find_file(disk.sha256) == disk.path
    assert cat.find_file(disk.sha256.upper()) == disk.path
    disk.path.write_bytes(b"changed size")
    assert cat.find_file(disk.sha256) is None
    disk.path.unlink()
    assert cat.find_file(disk.sha256) is None


def test_base_identity(tmp_path: Path) -> None:
    k = _file(tmp_path / "k", FileRole.KERNEL, b"k", "bzimage")
    i = _file(tmp_path / "i", FileRole.INITRD, b"i", "cpio")
    assert base_identity([k]) == k.sha256
    expected = hashlib.sha256(f"initrd {i.sha256}\nkernel {k.sha256}\n".encode()).hexdigest()
    assert base_identity([k, i]) == base_identity([i, k]) == expected
    moved = BaseFile(
        role="kernel", path=tmp_path / "elsewhere", sha256=k.sha256, size=1, format="x"
    )
    assert base_identity([moved, i]) == expected  # paths and formats do not count
    with pytest.raises(BadInput, match="at least one file"):
        base_identity([])
    with pytest.raises(BadInput, match="one file per role"):
        base_identity([k, k])


# -- the file itself ---------------------------------------------------------------------------


def test_corrupt_catalog(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(b"this is not an SQLite database\n" * 200)
    with pytest.raises(BadInput) as err:
        Catalog.open(path).list()
    msg = str(err.value)
    assert str(path) in msg and "--catalog" in msg and "VMWU_CATALOG" in msg
    assert "\n" not in msg


def test_foreign_sqlite_file(tmp_path: Path, make_base: MakeBase) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(BadInput, match="not a vmwu catalog"):
        Catalog.open(path).add(make_base("tiny"))


def test_newer_schema_refused(cat: Catalog, make_base: MakeBase) -> None:
    cat.add(make_base("tiny"))
    conn = sqlite3.connect(cat.path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(BadInput, match="schema version 99"):
        cat.list()


def test_catalog_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="is a directory"):
        Catalog.open(tmp_path).list()


def test_open_default_path(vmwu_home: Path, make_base: MakeBase) -> None:
    cat = Catalog.open()
    assert cat.path == vmwu_home / "data" / "catalog.sqlite"
    cat.add(make_base("tiny"))
    assert cat.path.is_file()
    assert Catalog.open(str(cat.path)).get("tiny").name == "tiny"


def test_schema_and_wal(cat: Catalog, make_base: MakeBase) -> None:
    cat.add(make_base("tiny"))
    conn = sqlite3.connect(cat.path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = [r[1] for r in conn.execute("PRAGMA table_info(bases)")]
        for thesis_field in (
            "id name description location architecture guest_os filesystem input_device "
            "output_device cdrom_device script_template date_added"
        ).split():
            assert thesis_field in cols
    finally:
        conn.close()


def test_two_catalogs_on_one_file(cat: Catalog, make_base: MakeBase) -> None:
    writer, other = cat, Catalog.open(cat.path)
    assert other.list() == []
    writer.add(make_base("tiny"))
    assert [b.name for b in other.list()] == ["tiny"]
    other.add(make_base("deb12", disk=True))
    assert [b.name for b in writer.list()] == ["tiny", "deb12"]

    # a reader in the middle of a read transaction does not block a writer (WAL)
    conn = sqlite3.connect(cat.path, isolation_level=None, timeout=0.1)
    try:
        conn.execute("BEGIN")
        assert conn.execute("SELECT count(*) FROM bases").fetchone()[0] == 2
        writer.add(make_base("third"))
        assert conn.execute("SELECT count(*) FROM bases").fetchone()[0] == 2  # its snapshot
        conn.execute("COMMIT")
    finally:
        conn.close()
    assert len(other.list()) == 3


def test_concurrent_writers_and_readers(cat: Catalog, make_base: MakeBase) -> None:
    bases = [make_base(f"b{i}") for i in range(8)]
    errors: list[BaseException] = []

    def write(b: BaseImage) -> None:
        try:
            Catalog.open(cat.path).add(b)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def read() -> None:
        try:
            for _ in range(20):
                Catalog.open(cat.path).list()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(b,)) for b in bases]
    threads += [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(b.name for b in cat.list()) == sorted(b.name for b in bases)


def test_concurrent_processes(cat: Catalog, make_base: MakeBase) -> None:
    """Several vmwu processes on one node add and list at once (a fresh catalog each time:
    they also race to create the schema)."""
    script = (
        "import sys; from pathlib import Path; from vmwu.bases.catalog import *\n"
        "cat = Catalog.open(sys.argv[1])\n"
        "k = Path(sys.argv[2]); import hashlib; data = k.read_bytes()\n"
        "f = BaseFile(role='kernel', path=k, sha256=hashlib.sha256(data).hexdigest(),"
        " size=len(data), format='bzimage')\n"
        "for _ in range(5): cat.list()\n"
        "cat.add(BaseImage(name=sys.argv[3], location=str(k.parent), architecture='x86_64',"
        " guest_os='linux6.1', sha256=f.sha256, files=(f,)))\n"
        "print(len(cat.list()))\n"
    )
    procs = []
    for i in range(4):
        kernel = make_base(f"p{i}").file(FileRole.KERNEL)
        assert kernel is not None
        argv = [sys.executable, "-c", script, str(cat.path), str(kernel.path), f"p{i}"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    assert sorted(b.name for b in cat.list()) == ["p0", "p1", "p2", "p3"]
