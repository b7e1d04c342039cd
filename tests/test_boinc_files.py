"""init_data.xml and the slot's soft-link files: parsers of what the BOINC client writes
(hostile-ish input), with property-based tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.boinc.fake import SAMPLE_INIT_DATA, FakeClient
from vmwu.errors import BadInput
from vmwu.wrapper.boinc.initdata import MAX_BYTES, parse_init_data
from vmwu.wrapper.boinc.links import LogicalNames, resolve_phrases, soft_link_target

# -- init_data.xml ------------------------------------------------------------------------------


def test_real_client_init_data() -> None:
    """The file Debian's client 7.20.5 wrote for a job of tests/boinc/server.py."""
    init = parse_init_data(SAMPLE_INIT_DATA.read_bytes())
    assert init.client_version == "7.20.5"
    assert (init.wu_name, init.result_name, init.app_name) == ("wu1", "wu1_0", "upper")
    assert init.project_dir.endswith("/projects/127.0.0.1_41347")
    assert init.checkpoint_period == 60.0
    assert (init.fraction_done_start, init.fraction_done_end) == (0.0, 1.0)
    assert init.rsc_memory_bound == 512e6
    assert init.client_pid == 26061
    assert init.ncpus == 1.0
    assert init.app_files == ("upper.sh",)
    assert init.host_info.m_nbytes == 25276194816.0
    assert init.host_info.os_name == "Linux Debian"
    assert "sse2" in init.host_info.p_features


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<app_init_data><checkpoint_period>soon</checkpoint_period></app_init_data>",
         r"<checkpoint_period>: expected a number, got 'soon'"),
        ("<app_init_data><checkpoint_period>nan</checkpoint_period></app_init_data>",
         r"<checkpoint_period>: expected a finite number"),
        ("<app_init_data><checkpoint_period>-1</checkpoint_period></app_init_data>",
         r"<checkpoint_period> is negative"),
        ("<app_init_data><using_sandbox>2</using_sandbox><no_priority_change>2"
         "</no_priority_change></app_init_data>", r"<no_priority_change>: expected 0 or 1"),
        ("<app_init_data><fraction_done_start>0.8</fraction_done_start>"
         "<fraction_done_end>0.2</fraction_done_end></app_init_data>", r"0 <= start <= end <= 1"),
        ("<app_init_data><project_dir>projects/x</project_dir></app_init_data>",
         r"<project_dir> 'projects/x' is not absolute"),
        ("<app_init_data><slot><a/></slot></app_init_data>", r"<slot> holds elements"),
        ("<init_data/>", r"the root element is <init_data>"),
        ("<app_init_data><slot>1</slot>", r"init_data.xml:1:\d+: not well-formed XML"),
        ('<!DOCTYPE a [<!ENTITY x "y">]><app_init_data>&x;</app_init_data>', r"refused"),
        ('<!DOCTYPE a SYSTEM "http://127.0.0.1/x.dtd"><app_init_data/>', r"refused"),
        # an encoding Python does not know raised LookupError (a traceback) before
        # init_data.xml went through vmwu.xmlsafe
        ('<?xml version="1.0" encoding="nope"?><app_init_data/>',
         r"init_data.xml:1:\d+: not well-formed XML"),
        ("<app_init_data><wu_name>" + "w" * 5000 + "</wu_name></app_init_data>",
         r"<wu_name>: longer than 4096"),
    ],
)  # fmt: skip
def test_bad_init_data(text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        parse_init_data(text.encode())


def test_billion_laughs_is_refused_before_expanding() -> None:
    lol = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    doc = f'<!DOCTYPE a [<!ENTITY l0 "lol">{lol}]>'
    doc += "<app_init_data><wu_name>&l9;</wu_name></app_init_data>"
    with pytest.raises(BadInput, match="refused"):
        parse_init_data(doc.encode())


def test_oversized_init_data() -> None:
    with pytest.raises(BadInput, match="larger than"):
        parse_init_data(b" " * (MAX_BYTES + 1))


def test_unknown_tags_are_skipped_and_defaults_kept() -> None:
    init = parse_init_data(
        b"<app_init_data><future_tag>x</future_tag><global_preferences><a>1</a>"
        b"</global_preferences><using_sandbox/></app_init_data>"
    )
    assert init.checkpoint_period == 300.0
    assert init.fraction_done_end == 1.0


@given(st.binary(max_size=2000))
@settings(max_examples=300)
def test_any_bytes_parse_or_bad_input(data: bytes) -> None:
    try:
        parse_init_data(data)
    except BadInput:
        pass


_texts = st.text(
    alphabet=st.characters(exclude_categories=["Cs", "Cc"], exclude_characters="<>&"),
    max_size=50,
)


@given(
    wu=_texts,
    period=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    start=st.floats(min_value=0, max_value=1),
    cpu=st.floats(min_value=0, max_value=1e12),
    slot=st.integers(min_value=-(2**31), max_value=2**31),
    junk=st.lists(st.sampled_from(["<x>1</x>", "<host_info><y/></host_info>", "<!-- c -->"])),
)
def test_generated_init_data_round_trips(
    wu: str, period: float, start: float, cpu: float, slot: int, junk: list[str]
) -> None:
    doc = (
        f"<app_init_data>{''.join(junk)}<wu_name>{wu}</wu_name>"
        f"<checkpoint_period>{period!r}</checkpoint_period>"
        f"<fraction_done_start>{start!r}</fraction_done_start>"
        f"<wu_cpu_time>{cpu:e}</wu_cpu_time><slot>{slot}</slot></app_init_data>"
    )
    init = parse_init_data(doc.encode())
    assert init.wu_name == wu.strip()
    assert init.checkpoint_period == period
    assert init.fraction_done_start == start
    assert init.wu_cpu_time == float(f"{cpu:e}")
    assert init.slot == slot


# -- soft links --------------------------------------------------------------------------------


def test_soft_link_target() -> None:
    assert soft_link_target(b"<soft_link>../../projects/p/f</soft_link>\n") == "../../projects/p/f"
    assert soft_link_target(b"hello\n<soft_link>x</soft_link>") is None, "first line only"
    assert soft_link_target(b"<soft_link></soft_link>") is None
    assert soft_link_target(b"\x89PNG binary") is None
    assert soft_link_target(b" " * 500 + b"<soft_link>x</soft_link>") is None, "512 bytes only"


@given(st.binary(max_size=1000))
def test_soft_link_target_never_raises(data: bytes) -> None:
    target = soft_link_target(data)
    assert target is None or (target and "\n" not in target)


_targets = st.characters(exclude_categories=["Cs"], exclude_characters="<\n\r")


@given(st.text(alphabet=_targets, min_size=1, max_size=200))
def test_soft_link_round_trip(target: str) -> None:
    data = f"<soft_link>{target}</soft_link>\n".encode()
    assert soft_link_target(data) == (target.strip() or None)


@pytest.fixture
def fake(tmp_path: Path) -> FakeClient:
    client = FakeClient(tmp_path / "data")
    return client


def test_resolve(fake: FakeClient) -> None:
    names = LogicalNames(fake.slot, fake.project_dir)
    physical = fake.link("in.txt", "wu1_in.txt", b"input")
    assert names.resolve("in.txt") == "../../projects/127.0.0.1_8000/wu1_in.txt"
    assert names.physical("in.txt") == physical
    assert (fake.slot / names.resolve("in.txt")).read_bytes() == b"input"
    (fake.slot / "copied.txt").write_text("copied in by the client (<copy_file/>)")
    assert names.resolve("copied.txt") == "copied.txt"
    assert names.resolve("missing.txt") == "missing.txt"
    assert names.resolve("sub/in.txt") == "sub/in.txt", "not a logical name"
    assert names.resolve_args(["-i", "boinc_resolve(in.txt)", "x=boinc_resolve(b)"]) == [
        "-i",
        "../../projects/127.0.0.1_8000/wu1_in.txt",
        "x=b",
    ]


def test_resolve_phrases() -> None:
    names = {"in.txt": "../../p/wu_in.txt", "out": "../../p/wu_0_out"}
    resolve = lambda name: names.get(name, name)  # noqa: E731
    args = ["boinc_resolve(in.txt)", "--o=boinc_resolve(out),boinc_resolve(x)", "plain"]
    assert resolve_phrases(args, resolve, "job.xml:2") == [
        "../../p/wu_in.txt",
        "--o=../../p/wu_0_out,x",
        "plain",
    ]
    assert resolve_phrases(["boinc_resolve()"], resolve, "w") == [""]
    with pytest.raises(BadInput, match=r"^job.xml:2: missing '\)' after 'boinc_resolve\('"):
        resolve_phrases(["a", "boinc_resolve(in.txt"], resolve, "job.xml:2")


@given(st.lists(st.text(max_size=60), max_size=5))
def test_resolve_phrases_any_arguments(args: list[str]) -> None:
    """Arguments without a phrase stay as they are; what a name resolves to is not
    searched again (no loop, whatever the names say)."""
    try:
        out = resolve_phrases(args, lambda name: "boinc_resolve(" + name, "w")
    except BadInput:
        assert any("boinc_resolve(" in a for a in args)
        return
    assert len(out) == len(args)
    for before, after in zip(args, out, strict=True):
        if "boinc_resolve(" not in before:
            assert after == before


@pytest.mark.parametrize(
    "target",
    [
        "../../../../etc/passwd",
        "/etc/passwd",
        "../../projects/127.0.0.1_8000/../other/file",
        "../../projects/127.0.0.1_8000/escape/x",  # 'escape' is a symlink out of the project
    ],
)
def test_links_out_of_the_project_dir_are_refused(fake: FakeClient, target: str) -> None:
    (fake.project_dir / "escape").symlink_to("/etc")
    (fake.slot / "in.txt").write_text(f"<soft_link>{target}</soft_link>\n")
    names = LogicalNames(fake.slot, fake.project_dir)
    with pytest.raises(BadInput, match="leads outside the project directory"):
        names.resolve("in.txt")
    with pytest.raises(BadInput, match="leads outside the project directory"):
        names.materialize()
    assert not (fake.slot / "in.txt").is_symlink()


def test_materialize_links_inputs_and_frees_outputs(fake: FakeClient) -> None:
    fake.link("in.txt", "wu1_in.txt", b"input")
    out = fake.link("out.txt", "wu1_0_out.txt")  # an output: no physical file yet
    (fake.slot / "plain.txt").write_text("plain")
    names = LogicalNames(fake.slot, fake.project_dir)
    inputs, outputs = names.materialize()
    assert inputs == {"in.txt": "../../projects/127.0.0.1_8000/wu1_in.txt"}
    assert outputs == {"out.txt": "../../projects/127.0.0.1_8000/wu1_0_out.txt"}
    assert (fake.slot / "in.txt").is_symlink()
    assert (fake.slot / "in.txt").read_bytes() == b"input"
    assert names.resolve("in.txt") == "in.txt", "BOINC takes a symlink as the file itself"
    assert not (fake.slot / "out.txt").exists(), "the job writes a file of its own there"
    assert not (fake.slot / "plain.txt").is_symlink()
    assert names.materialize() == (inputs, {}), "idempotent"

    (fake.slot / "out.txt").write_text("result")  # a program that knows nothing of BOINC
    assert names.promote({**outputs, "gone.txt": "../../projects/127.0.0.1_8000/g"}) == (
        ["out.txt"],
        ["gone.txt"],
    )
    assert out.read_text() == "result", "the output is in the physical file"
    assert sorted(os.listdir(fake.slot)) == [
        "boinc_mmap_file",
        "in.txt",
        "init_data.xml",
        "plain.txt",
    ]


def test_client_symlinks_are_links_too(fake: FakeClient) -> None:
    """A project with use_symlinks: the client makes symbolic links, not soft-link files."""
    (fake.project_dir / "wu1_in.txt").write_text("input")
    (fake.slot / "in.txt").symlink_to("../../projects/127.0.0.1_8000/wu1_in.txt")
    (fake.slot / "out.txt").symlink_to("../../projects/127.0.0.1_8000/wu1_0_out.txt")
    (fake.slot / "bad.txt").symlink_to("/etc/passwd")
    names = LogicalNames(fake.slot, fake.project_dir)
    with pytest.raises(BadInput, match="bad.txt: its soft link '/etc/passwd' leads outside"):
        names.links()
    (fake.slot / "bad.txt").unlink()
    assert names.materialize() == (
        {"in.txt": "../../projects/127.0.0.1_8000/wu1_in.txt"},
        {"out.txt": "../../projects/127.0.0.1_8000/wu1_0_out.txt"},
    )
    assert not os.path.lexists(fake.slot / "out.txt")
