"""Instance ISO contents, templates, initramfs archives and the event stream."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
from pathlib import Path

import pycdlib
import pytest

from tests.newc import read_initramfs
from vmwu import guest
from vmwu.errors import BadInput, SpecError
from vmwu.guest.events import EventReader, InstanceState, Phase
from vmwu.images import cpio
from vmwu.images.iso import IsoEntry, write_iso
from vmwu.pack.template import TOKENS, render
from vmwu.run.params import param_entries


def _read_iso(path: Path) -> dict[str, bytes]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    out = {}
    facade = iso.get_rock_ridge_facade()
    for dirname, _dirs, files in facade.walk("/"):
        for name in files:
            p = f"{dirname.rstrip('/')}/{name}"
            buf = io.BytesIO()
            facade.get_file_from_iso_fp(buf, p)
            out[p.lstrip("/")] = buf.getvalue()
    label = iso.pvd.volume_identifier.decode().strip()
    iso.close()
    out["<label>"] = label.encode()
    return out


def test_param_files_round_trip_through_sh(tmp_path: Path) -> None:
    args = ["a b", "it's", '"q"', "$X", "`id`", "ü✓", "", "-x"]
    entries = {e.dest: e.data for e in param_entries(args)}
    assert entries["param"] == (" ".join(args) + "\n").encode()
    assert entries["param.argv"] == "".join(a + "\n" for a in args).encode()
    script = tmp_path / "p.sh"
    script.write_bytes(entries["param.sh"] or b"")
    shown = subprocess.run(
        ["sh", "-c", f'. {shlex.quote(str(script))}; for a in "$@"; do printf "%s\\0" "$a"; done'],
        capture_output=True,
        check=True,
    ).stdout
    assert shown.split(b"\0")[:-1] == [a.encode() for a in args]


def test_parameters_filename_renames_only_the_thesis_file() -> None:
    names = [e.dest for e in param_entries(["x"], "para")]
    assert names == ["para", "param.argv", "param.sh"]
    with pytest.raises(BadInput):
        param_entries(["x"], "../etc")
    with pytest.raises(BadInput):
        param_entries(["x"], "param.sh")


def test_iso_keeps_names_and_label(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * 70000)
    out = tmp_path / "i.iso"
    write_iso(
        out,
        [
            IsoEntry("param", data=b"1 2\n"),
            IsoEntry("A Long Mixed-Case Name.txt", data=b"long"),
            IsoEntry("sub/dir/Über.dat", source=src),
            IsoEntry("sub/other", data=b"o"),
        ],
    )
    files = _read_iso(out)
    assert files["<label>"] == b"VMWU-INST"
    assert files["param"] == b"1 2\n"
    assert files["A Long Mixed-Case Name.txt"] == b"long"
    assert files["sub/dir/Über.dat"] == src.read_bytes()
    assert files["sub/other"] == b"o"


@pytest.mark.parametrize("dest", ["/abs", "../up", "a/../b", ""])
def test_iso_refuses_bad_destinations(tmp_path: Path, dest: str) -> None:
    with pytest.raises(BadInput):
        write_iso(tmp_path / "i.iso", [IsoEntry(dest, data=b"")])


def test_iso_refuses_duplicates(tmp_path: Path) -> None:
    with pytest.raises(BadInput):
        write_iso(tmp_path / "i.iso", [IsoEntry("a", data=b""), IsoEntry("a", data=b"")])


def _values() -> dict[str, str]:
    return {t: f"<{t.lower()}>" for t in TOKENS}


def test_default_template_uses_all_tokens_it_needs() -> None:
    text = guest.read(guest.DEFAULT_TEMPLATE).decode()
    script = render(text, _values(), "t")
    assert "###" not in script
    for token in (
        "LAUNCHING_COMMAND",
        "WORKING_DIRECTORY",
        "INSTANCE_COMMAND",
        "OUTPUT_MOUNT_DEVICE",
    ):
        assert f"<{token.lower()}>" in script


def test_thirteen_tokens() -> None:
    assert len(TOKENS) == 13
    every = "\n".join(f"###{t}###" for t in TOKENS)
    assert render(every, _values(), "t").splitlines() == [f"<{t.lower()}>" for t in TOKENS]


def test_unknown_token_names_line() -> None:
    with pytest.raises(SpecError, match=r"tmpl:2: unknown template token ###NOPE###"):
        render("ok\n###NOPE###\n", _values(), "tmpl")


def test_initramfs_is_valid_newc_and_reproducible(tmp_path: Path) -> None:
    entries = [
        cpio.directory("bin"),
        cpio.file("bin/x", b"hello", 0o755),
        cpio.symlink("bin/sh", "x"),
        cpio.chardev("dev/console", 5, 1),
    ]
    a, b = tmp_path / "a.gz", tmp_path / "b.gz"
    cpio.write_initramfs(a, entries)
    cpio.write_initramfs(b, entries)
    assert a.read_bytes() == b.read_bytes()
    parsed = read_initramfs(a)
    assert [(e.path, oct(e.mode)) for e in parsed] == [
        ("bin", oct(0o40755)),
        ("bin/x", oct(0o100755)),
        ("bin/sh", oct(0o120777)),
        ("dev/console", oct(0o20600)),
    ]
    assert parsed[1].data == b"hello"
    assert parsed[2].data == b"x"
    assert parsed[3].rdev == (5, 1)


def test_event_reader_handles_partial_lines_and_noise(tmp_path: Path) -> None:
    path = tmp_path / "ev"
    reader = EventReader(path)
    assert reader.read() == []
    path.write_bytes(b'garbage\r\n{"event":"booted","agent":1}\r\n{"event":"prog')
    assert reader.read() == [{"event": "booted", "agent": 1}]
    with open(path, "ab") as fh:
        fh.write(b'ress","fraction":0.25}\r\n{"event":"exit","code":3,"disk_full":false}\n')
    events = reader.read()
    state = InstanceState()
    for e in events:
        state.apply(e, 1.0)
    assert state.fraction == 0.25
    assert state.exit_code == 3
    assert state.phase == Phase.SHUTTING_DOWN
    assert json.dumps(events[0]) == '{"event": "progress", "fraction": 0.25}'


def test_agent_scripts_are_posix_sh(tmp_path: Path) -> None:
    for name in (guest.AGENT, guest.PROGRESS, guest.MOUNT, guest.TINY_INIT):
        path = Path(guest.__file__).parent / name
        subprocess.run(["sh", "-n", str(path)], check=True)
    script = tmp_path / "autorun.sh"
    values = {t: "/x" for t in TOKENS} | {"LAUNCHING_COMMAND": "echo hi", "INSTANCE_COMMAND": ""}
    script.write_text(render(guest.read(guest.DEFAULT_TEMPLATE).decode(), values, "t"))
    subprocess.run(["sh", "-n", str(script)], check=True)


def test_iso_names_that_collide_after_mangling(tmp_path: Path) -> None:
    names = [f".vmwu/instance-script-{i}" for i in range(12)] + ["instance-script", "instance-post"]
    out = tmp_path / "i.iso"
    write_iso(out, [IsoEntry(n, data=n.encode()) for n in names])
    files = _read_iso(out)
    for n in names:
        assert files[n] == n.encode()


def test_events_from_a_hostile_guest_are_bounded(tmp_path: Path) -> None:
    """Events come from the guest: a flood, an endless line, odd codes and long messages."""
    from vmwu.guest import events as ev

    path = tmp_path / "events.jsonl"
    junk = b"x" * (ev.MAX_LINE + 10)  # one line without an end, longer than any event
    lines = [
        b'{"event": "exit", "code": 300}',
        b'{"event": "exit", "code": true}',
        b'{"event": "progress", "fraction": NaN}',
        b'{"event": "progress", "fraction": 0.5, "message": "' + b"m" * 5000 + b'"}',
    ]
    path.write_bytes(junk + b"\n" + b"\n".join(lines) + b"\n" + b"y" * (3 * ev.MAX_READ))
    reader = EventReader(path)
    state = InstanceState()
    seen = 0
    for _ in range(10):
        batch = reader.read()
        seen += len(batch)
        for event in batch:
            state.apply(event, 1.0)
    assert seen == 4
    assert state.exit_code is None
    assert state.fraction == 0.5 and len(state.message) == ev.MAX_MESSAGE
    assert len(reader._partial) <= ev.MAX_LINE
    assert ev.check_log_sizes(path) is None
    with open(path, "ab") as fh:
        fh.truncate(ev.MAX_LOG_BYTES + 1)
    assert "wrote more than" in (ev.check_log_sizes(None, path) or "")
