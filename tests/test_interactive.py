"""The two interactive moments of `vmwu pack` (thesis figures 6.3 and 6.4), driven through
a real pseudo-terminal: choosing a base from the numbered list, and editing the generated
auto-run script in the user's editor."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from tests.fakebase import (
    GOOD_SPEC,
    Home,
    add_fake_base,
    one_error_line,
    write_app,
)
from vmwu.images import ext4_read, qemu_img


def run_in_pty(
    argv: list[str], env: dict[str, str], cwd: Path, answers: list[tuple[bytes, bytes]]
) -> tuple[int, str]:
    """Run ``argv`` with a terminal as stdin/stdout; whenever the output contains the
    first pending prompt, type its answer."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env={**os.environ, **env}, cwd=cwd
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
                if answers and answers[0][0] in seen:
                    os.write(master, answers.pop(0)[1])
            elif proc.poll() is not None:
                break
        else:
            pending = answers[0][0] if answers else b"(none)"
            raise AssertionError(
                f"{argv[2:]} did not end within 60 s; prompt still awaited: {pending!r}; "
                f"output so far: {seen.decode(errors='replace')[-2000:]}"
            )
        return proc.wait(timeout=30), seen.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:  # a failed test leaves nothing running
            proc.kill()
            proc.wait()


def _autorun(unit: Path, tmp: Path) -> str:
    with tarfile.open(unit) as tar:
        tar.extract("u-app.qcow2", tmp, filter="data")
    raw = tmp / "app.raw"
    qemu_img.convert(tmp / "u-app.qcow2", raw, src_format="qcow2", dst_format="raw")
    data = ext4_read.read_file(raw, "/.vmwu/bin/autorun.sh")
    assert data is not None
    return data.decode()


def test_choose_a_base_from_the_numbered_list(tmp_path: Path) -> None:
    home = Home(tmp_path / "home", tmp_path)
    write_app(tmp_path)
    add_fake_base(home, "first")
    add_fake_base(home, "second")
    (tmp_path / "u.toml").write_text(GOOD_SPEC + "base-image-autosource-interaction = 1\n")
    code, out = run_in_pty(
        [sys.executable, "-m", "vmwu", "pack", "u.toml", "-q", "-o", "u.ova"],
        home.env,
        tmp_path,
        [(b"Enter ID of selected base", b"2\n")],
    )
    assert code == 0, out
    assert "first" in out and "second" in out  # the thesis's list of matching bases
    listing = home("inspect", "u.ova", "--json")
    assert '"name": "second"' in listing.stdout


def test_edit_the_generated_script(tmp_path: Path) -> None:
    home = Home(tmp_path / "home", tmp_path)
    write_app(tmp_path)
    add_fake_base(home)
    editor = tmp_path / "editor.sh"
    # an "editor" that adds a line, as the thesis's author added the gcc line (figure 6.4)
    editor.write_text('#!/bin/sh\nsed -i "s|^# Launch application|echo edited\\n&|" "$1"\n')
    editor.chmod(0o755)
    (tmp_path / "u.toml").write_text(GOOD_SPEC + f'edit-script = 1\ntext-editor = "{editor}"\n')
    code, out = run_in_pty(
        [sys.executable, "-m", "vmwu", "pack", "u.toml", "-q", "-o", "u.ova"],
        home.env,
        tmp_path,
        [],
    )
    assert code == 0, out
    script = _autorun(tmp_path / "u.ova", tmp_path)
    assert "echo edited\n# Launch application\n/app/run.sh\n" in script


GOOD_GVAP = 'package-name="u"\napp-import-dir="app"\napp-launch="/app/run.sh"\n'


def test_the_base_choice_is_read_from_a_pipe_too(tmp_path: Path) -> None:
    """The thesis's tool read the chosen ID from standard input: a script pipes it in
    (``printf '2\\n' | vmwu pack u.gvap``), no terminal needed."""
    home = Home(tmp_path / "home", tmp_path)
    write_app(tmp_path)
    add_fake_base(home, "first")
    add_fake_base(home, "second")
    (tmp_path / "u.gvap").write_text(GOOD_GVAP + "base-image-autosource-interaction=1\n")
    result = subprocess.run(
        [sys.executable, "-m", "vmwu", "pack", "u.gvap", "-q", "-o", "u.ova"],
        input="2\n",
        capture_output=True,
        text=True,
        env={**os.environ, **home.env},
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "first" in result.stdout and "second" in result.stdout  # the numbered list
    assert "Enter ID of selected base" in result.stdout
    listing = home("inspect", "u.ova", "--json")
    assert '"name": "second"' in listing.stdout


def test_an_empty_stdin_is_one_clear_line(tmp_path: Path) -> None:
    home = Home(tmp_path / "home", tmp_path)
    write_app(tmp_path)
    add_fake_base(home, "first")
    (tmp_path / "u.gvap").write_text(GOOD_GVAP + "base-image-autosource-interaction=1\n")
    for stdin in ("", "nope\n"):  # nothing at all; an answer that is no ID, then the end
        result = subprocess.run(
            [sys.executable, "-m", "vmwu", "pack", "u.gvap", "-q", "-o", "u.ova"],
            input=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, **home.env},
            cwd=tmp_path,
            timeout=120,
        )
        line = one_error_line(result, 241, "u.gvap:4", "base-image-autosource-interaction")
        assert "no base chosen: standard input ended before an answer" in line
        assert not (tmp_path / "u.ova").exists()
