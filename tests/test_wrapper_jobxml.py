"""job.xml: the BOINC wrapper's and VMwrapper's fields, macros, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmwu.errors import BadInput, ExitCode, SpecError
from vmwu.wrapper.jobxml import TaskKind, expand, load_job, parse_job

DATA = Path(__file__).parent / "data" / "boinc"


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_job(text.encode(), "job.xml")


def error(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse(text)
    assert info.value.exit_code == ExitCode.BAD_INPUT
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_vmwrapper_slides_worker_example_parses() -> None:
    job = load_job(DATA / "vmwrapper-worker-job.xml")
    assert [t.command_line for t in job.unzip_tasks] == [
        ("-xf", "./cctools-2_5_2-1686-linux-2.6.tar"),
        ("-xf", "./apache-activemq-5.2.0.tar"),
        ("-xf", "./boincvm.tar"),
    ]
    assert job.unzip_tasks[0].stdout_filename == "stdout_tar"
    assert [d.kind for d in job.daemons] == [TaskKind.MANAGE, TaskKind.MANAGE]
    assert job.daemons[0].application == "./apache-activemq-5.2.0/bin/activemq"
    assert job.daemons[0].stdin_filename is None  # <stdin_filename></stdin_filename>
    assert job.daemons[1].command_line == ("./boincvm/HostMain.py", "./boincvm/HostConfig.cfg")
    (task,) = job.tasks
    assert task.is_vm and not task.is_unit
    assert task.virtualmachine == "CernVM"
    assert task.application == "./worker.py"
    assert task.copy_app_to_vm is True
    assert task.copy_file_to_vm == ("in", "stdin_worker")
    assert task.copy_file_from_vm == ("out",)
    assert task.stdin_filename == "stdin_worker"
    assert task.command_line == ("5",)
    assert task.weight == 2.0
    assert job.has_vm_tasks


def test_every_boinc_wrapper_field() -> None:
    job = parse(
        """<job_desc><task>
        <application>worker</application>
        <command_line>--in "a b" 'c d' $NTHREADS</command_line>
        <stdin_filename>in</stdin_filename>
        <stdout_filename>out</stdout_filename>
        <stderr_filename>err</stderr_filename>
        <weight>3.5</weight>
        <checkpoint_filename>ck</checkpoint_filename>
        <fraction_done_filename>fd</fraction_done_filename>
        <setenv>A=1</setenv>
        <setenv>PATH_X=$PWD/bin:x=y</setenv>
        <exec_dir>sub</exec_dir>
        <time_limit>90</time_limit>
        <append_cmdline_args/>
        </task>
        <task><application>d</application><daemon>1</daemon></task>
        </job_desc>"""
    )
    (task,) = job.tasks
    assert task.command_line == ("--in", "a b", "c d", "$NTHREADS")
    assert (task.stdin_filename, task.stdout_filename, task.stderr_filename) == (
        "in",
        "out",
        "err",
    )
    assert task.weight == 3.5
    assert task.checkpoint_filename == "ck" and task.fraction_done_filename == "fd"
    assert task.setenv == (("A", "1"), ("PATH_X", "$PWD/bin:x=y"))
    assert task.exec_dir == "sub" and task.time_limit == 90.0
    assert task.append_cmdline_args is True  # an empty bool element means true, as in BOINC
    assert not task.is_vm
    assert [d.application for d in job.daemons] == ["d"]


def test_macros_are_substituted_in_arguments_after_splitting() -> None:
    job = parse(
        "<job_desc><task><application>$PROJECT_DIR/app</application>"
        "<command_line>-n $NTHREADS -o $PWD/out $HOME $PWDX</command_line>"
        "<setenv>DIR=$PROJECT_DIR</setenv></task></job_desc>"
    )
    macros = {"PROJECT_DIR": "/p with space", "PWD": "/slot", "NTHREADS": "4"}
    task = expand(job.tasks[0], macros)
    assert task.application == "/p with space/app"
    assert task.command_line == ("-n", "4", "-o", "/slot/out", "$HOME", "$PWDX")
    assert task.setenv == (("DIR", "/p with space"),)
    assert task.kind is TaskKind.TASK


def test_a_unit_vm_task() -> None:
    job = parse(
        "<job_desc><task><virtualmachine>units/count.ova</virtualmachine>"
        "<image>tiny</image><command_line>10</command_line>"
        "<copy_file_from_VM>steps.log</copy_file_from_VM></task></job_desc>"
    )
    task = job.tasks[0]
    assert task.is_unit and task.application is None and task.image == "tiny"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "<job_desc>\n<task>\n<aplication>x</aplication></task></job_desc>",
            "job.xml:3: unknown tag <aplication> in <task> (did you mean <application>?)",
        ),
        (
            "<job_desc>\n\n<tsk><application>x</application></tsk></job_desc>",
            "job.xml:3: unknown tag <tsk> in <job_desc> (did you mean <task>?)",
        ),
        (
            "<job>\n</job>",
            "job.xml:1: the root element is <job>, expected <job_desc>",
        ),
        (
            "<job_desc><task><application>x</application>\n<weight>heavy</weight></task>"
            "</job_desc>",
            "job.xml:2: <weight>: expected a number, got 'heavy'",
        ),
        (
            "<job_desc><task><application>x</application><weight>-1</weight></task></job_desc>",
            "a weight cannot be negative",
        ),
        (
            "<job_desc><task><application>x</application><time_limit>0</time_limit></task>"
            "</job_desc>",
            "expected a positive number of seconds",
        ),
        (
            "<job_desc><task><application>x</application><daemon>maybe</daemon></task></job_desc>",
            "expected 0 or 1",
        ),
        (
            "<job_desc><task><application>x</application><setenv>1A=2</setenv></task></job_desc>",
            "expected NAME=VALUE",
        ),
        (
            "<job_desc><task><application>x</application>\n"
            "<application>y</application></task></job_desc>",
            "job.xml:2: <application> given twice in <task> (first on line 1)",
        ),
        (
            "<job_desc><task><command_line>x</command_line></task></job_desc>",
            "job.xml:1: <task> has no <application>",
        ),
        (
            "<job_desc><unzip_task><application>tar</application></unzip_task></job_desc>",
            "<job_desc> has no <task> to run",
        ),
        (
            "<job_desc><task><application>x</application><command_line>'a</command_line>"
            "</task></job_desc>",
            "cannot split the command line: No closing quotation",
        ),
        (
            "<job_desc><task><application>x</application></task>",
            "not well-formed XML",
        ),
        (
            "",
            "job.xml:1: not well-formed XML: no element found",
        ),
        (
            '<job_desc><task mode="fast"><application>x</application></task></job_desc>',
            "<task> takes no attributes",
        ),
        (
            "<job_desc>\n<task><application>x</application></task>\nstray</job_desc>",
            "job.xml:3: unexpected text 'stray' in <job_desc>",
        ),
        (
            "<job_desc><task><application><b>x</b></application></task></job_desc>",
            "<application> holds text, not elements",
        ),
        (
            "<job_desc><task><application>x</application>\n"
            "<copy_file_to_VM>in</copy_file_to_VM></task></job_desc>",
            "job.xml:2: <copy_file_to_VM> needs a <virtualmachine>",
        ),
        (
            "<job_desc><task><virtualmachine>tiny</virtualmachine></task></job_desc>",
            "runs in base image 'tiny' but has no <application>",
        ),
        (
            "<job_desc><task><virtualmachine>u.ova</virtualmachine>\n"
            "<checkpoint_filename>ck</checkpoint_filename></task></job_desc>",
            "job.xml:2: <checkpoint_filename> is for host tasks, and this <task> runs in a VM",
        ),
        (
            "<job_desc><unzip_task><virtualmachine>u.ova</virtualmachine></unzip_task>"
            "<task><application>x</application></task></job_desc>",
            "only a <task> can have a <virtualmachine>",
        ),
        (
            "<job_desc><task><virtualmachine>u.ova</virtualmachine>"
            "<copy_file_from_VM>../etc/passwd</copy_file_from_VM></task></job_desc>",
            "must be a path relative to the guest's output directory",
        ),
        (  # issue 11: the wrapper's own outputs never land outside the slot
            "<job_desc><task><application>a</application>"
            "<stdout_filename>../../X</stdout_filename></task></job_desc>",
            "'../../X' must be a path relative to the slot directory",
        ),
        (
            "<job_desc><task><application>a</application>"
            "<stderr_filename>/etc/cron.d/x</stderr_filename></task></job_desc>",
            "'/etc/cron.d/x' must be a path relative to the slot directory",
        ),
        (
            "<job_desc><task><virtualmachine>u.ova</virtualmachine>"
            "<setenv>A=1</setenv></task></job_desc>",
            "<setenv> cannot reach into a packed unit",
        ),
        (
            "<job_desc><task><virtualmachine>tiny</virtualmachine><application>a</application>"
            "<image>other</image></task></job_desc>",
            "<image> replaces a unit's base",
        ),
    ],
)
def test_bad_job_files_get_one_line_errors_with_the_line(text: str, expected: str) -> None:
    assert expected in error(text)


def test_document_type_declarations_and_entities_are_refused() -> None:
    bomb = (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>\n'
        "<job_desc><task><application>&lol2;</application></task></job_desc>"
    )
    assert "document type declarations and entities are not allowed" in error(bomb)
    external = (
        '<!DOCTYPE job_desc SYSTEM "file:///etc/passwd">'
        "<job_desc><task><application>x</application></task></job_desc>"
    )
    assert "not allowed" in error(external)


def test_predefined_entities_and_character_references_still_work() -> None:
    job = parse(
        "<job_desc><task><application>x</application>"
        "<command_line>a&amp;b &#x41;</command_line></task></job_desc>"
    )
    assert job.tasks[0].command_line == ("a&b", "A")


def test_load_job_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="cannot read job file"):
        load_job(tmp_path / "missing.xml")
    with pytest.raises(BadInput, match="is a directory"):
        load_job(tmp_path)
    big = tmp_path / "big.xml"
    big.write_bytes(b"<job_desc>" + b" " * (1024 * 1024 + 10) + b"</job_desc>")
    with pytest.raises(SpecError, match="larger than"):
        load_job(big)
