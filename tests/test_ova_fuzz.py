"""Property-based tests of the OVA reader (vmwu/unit/reader.py ``OvaReader``), the parser of
units from elsewhere: whatever the bytes, opening, verifying and extracting a unit either
works or raises one of vmwu's own errors (``VmwuError``), and nothing is written anywhere
but the one destination the caller named.

Three sources of hostile units: tars of random members (names, types, sizes, link
targets), a real unit with random byte mutations (flips, cuts, insertions, overwrites;
plain and gzip'd), and a real unit whose descriptor text is mutated with its manifest
kept consistent, so that the descriptor parser and the checks behind it are reached.
``VMWU_FUZZ_EXAMPLES`` sets the number of examples per test (default 150).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.units import (
    APP,
    OUT,
    good_entries,
    make_desc,
)
from vmwu.errors import VmwuError
from vmwu.unit.manifest import render_manifest
from vmwu.unit.ovf_render import render_ovf
from vmwu.unit.reader import OvaReader

EXAMPLES = int(os.environ.get("VMWU_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


GOOD = tar_bytes(good_entries(), tarfile.PAX_FORMAT)


def exercise(data: bytes) -> None:
    """Open ``data`` as a unit in a sandbox, verify it and extract every embedded member;
    assert that only VmwuError escapes and that nothing lands outside the destination."""
    with tempfile.TemporaryDirectory(prefix="vmwu-fuzz-") as sandbox_str:
        sandbox = Path(sandbox_str)
        unit = sandbox / "unit.ova"
        unit.write_bytes(data)
        out = sandbox / "out"
        out.mkdir()
        allowed = {unit}
        cwd = os.getcwd()
        os.chdir(out)  # a reader that wrote relative to the working directory would show
        try:
            with OvaReader(unit, max_member_size=1 << 20) as reader:
                reader.verify()
                for i, f in enumerate(reader.descriptor.embedded_files()):
                    dest = out / f"member-{i}"
                    allowed.add(dest)
                    reader.extract(f.href, dest)
                    assert dest.stat().st_size == f.size
                    assert hashlib.sha256(dest.read_bytes()).hexdigest() == f.sha256
        except VmwuError as err:
            assert str(err) and "\n" not in err.message
        finally:
            os.chdir(cwd)
        written = {p for p in sandbox.rglob("*") if not p.is_dir()}
        assert written <= allowed, sorted(map(str, written - allowed))
        assert {p for p in sandbox.rglob("*") if p.is_dir()} == {out}


# -- random members ---------------------------------------------------------------------------

NAMES = st.one_of(
    st.sampled_from(
        [
            "u.ovf",
            "u.mf",
            "u-app.qcow2",
            "u-output.qcow2",
            "tiny-vmlinuz",
            "../../etc/passwd",
            "/etc/shadow",
            "a/b",
            "..",
            ".",
            "",
            "x" * 300,
            "dir/",
            "evil\nname",
            "\u202eevil",
        ]
    ),
    st.text(min_size=0, max_size=40),
)
TYPES = st.sampled_from(
    [
        tarfile.REGTYPE,
        tarfile.AREGTYPE,
        tarfile.SYMTYPE,
        tarfile.LNKTYPE,
        tarfile.CHRTYPE,
        tarfile.BLKTYPE,
        tarfile.DIRTYPE,
        tarfile.FIFOTYPE,
        tarfile.CONTTYPE,
    ]
)


@st.composite
def members(draw: st.DrawFn) -> tuple[tarfile.TarInfo, bytes | None]:
    name = draw(NAMES)
    kind = draw(TYPES)
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = draw(st.sampled_from([0o644, 0o4755, 0o777, 0]))
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = draw(st.sampled_from(["/etc/shadow", "../../x", "u.ovf", "", "a/b"]))
        return info, None
    if kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
        data = draw(st.sampled_from([APP, OUT, b""]) | st.binary(max_size=2048))
        info.size = len(data)
        return info, data
    return info, None


@FUZZ
@given(
    head=st.booleans(),
    extra=st.lists(members(), max_size=6),
    fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]),
)
def test_random_members(
    head: bool, extra: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int
) -> None:
    entries = (good_entries()[:2] if head else []) + extra
    try:
        data = tar_bytes(entries, fmt)
    except (ValueError, UnicodeError):  # a name or size this tar format cannot carry
        return
    exercise(data)


# -- a real unit, mutated -----------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(GOOD)
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "cut", "insert", "overwrite", "zero-block"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if how == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del data[pos:]
        elif how == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=600))
        elif how == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=600))
            data[pos : pos + len(chunk)] = chunk
        elif how == "zero-block":  # where a header was: tarfile's end of archive
            block = pos - pos % 512
            data[block : block + 512] = bytes(512)
    out = bytes(data)
    if draw(st.booleans()):
        out = gzip.compress(out, mtime=0)
        if draw(st.booleans()):
            out = out[: draw(st.integers(0, len(out)))]
    return out


@FUZZ
@given(data=mutated())
def test_mutated_unit(data: bytes) -> None:
    exercise(data)


# -- a real unit with a mutated descriptor (and a manifest that matches it) ------------------


@st.composite
def descriptor_mutations(draw: st.DrawFn) -> bytes:
    text = render_ovf(make_desc()).decode()
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["replace", "delete", "insert", "swap-value"]))
        pos = draw(st.integers(0, len(text) - 1))
        if how == "replace":
            text = text[:pos] + draw(st.text(min_size=1, max_size=8)) + text[pos + 1 :]
        elif how == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 40)) :]
        elif how == "insert":
            snippet = draw(
                st.sampled_from(
                    [
                        '<!DOCTYPE x [<!ENTITY a "aaaa">]>',
                        "&a;",
                        'ovf:href="../../etc/passwd"',
                        'ovf:size="99999999999999999999999"',
                        'vmwu:embedded="true"',
                        'ovf:capacity="-1"',
                        "<File/>",
                        "</Envelope>",
                        "\x00",
                    ]
                )
                | st.text(max_size=20)
            )
            text = text[:pos] + snippet + text[pos:]
        else:
            for old, new in draw(
                st.sampled_from(
                    [
                        [('ovf:size="', 'ovf:size="1')],
                        [('vmwu:embedded="false"', 'vmwu:embedded="true"')],
                        [("u-app.qcow2", "u-output.qcow2")],
                        [('vmwu:format="qcow2"', 'vmwu:format="raw"')],
                        [("1.0", "9.9")],
                        [("<vmwu:Timeout>", "<vmwu:Timeout>nan")],
                    ]
                )
            ):
                text = text.replace(old, new, 1)
    ovf = text.encode("utf-8", "surrogatepass")
    blobs = {"u-app.qcow2": APP, "u-output.qcow2": OUT}
    manifest = render_manifest(
        [("u.ovf", hashlib.sha256(ovf).hexdigest())]
        + [(name, hashlib.sha256(data).hexdigest()) for name, data in blobs.items()]
    )
    entries = [(name, data) for name, data in [("u.ovf", ovf), ("u.mf", manifest), *blobs.items()]]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@FUZZ
@given(data=descriptor_mutations())
def test_mutated_descriptor(data: bytes) -> None:
    exercise(data)


def test_the_unmutated_unit_extracts() -> None:
    """The fuzzers start from a unit that opens: a mutation is what makes it fail."""
    with tempfile.TemporaryDirectory() as tmp:
        unit = Path(tmp) / "u.ova"
        unit.write_bytes(GOOD)
        with OvaReader(unit) as reader:
            reader.verify()
            assert [f.href for f in reader.descriptor.embedded_files()] == [
                "u-app.qcow2",
                "u-output.qcow2",
            ]
