"""Running a task's commands, as Nimrod's agent does: in order, with an error policy
(``onerror fail`` by default: the first failure ends the task; ``onerror ignore``: failures
are recorded and the task goes on) and the output streams of the commands that follow a
``redirect`` (by default both go to the task's log).

One :class:`TaskRun` per task run: task main of a job and nodestart on its node
(:mod:`vmwu.sweep.runner`), rootstart and rootfinish on the submit host
(:mod:`vmwu.sweep.driver`). Processes start in :func:`spawn`, and only there.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import IO, Any

from vmwu import tools
from vmwu.errors import BadInput, HostDiskFull, ToolNotFound, VmwuError
from vmwu.hostfs import is_disk_full
from vmwu.sweep.expand import node_relative, root_output, root_relative, source_path
from vmwu.sweep.hostcopy import copy_untrusted, kind_of, open_output, read_file, write_file
from vmwu.sweep.model import DEV_NULL, IDENT, ROOT_TASKS, Side, Step, StepKind, Value, format_value


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdout: int,
    stderr: int,
    executable: str | None = None,
) -> tools.Process:
    """The one place a plan's commands start processes: through vmwu's door, under its
    process guard (vmwu/guard.py), so that a command's whole tree (a `vmwu run` and its
    QEMU, what it leaves in the background) ends with the command and dies with the
    runner or driver, whatever kills it."""
    return tools.spawn(
        argv,
        executable=executable,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        tree=True,
    )


class JobState(StrEnum):
    """How a job's commands came out (``state`` in its job.json)."""

    DONE = "done"
    FAILED = "failed"


@dataclass
class Outcome:
    state: JobState = JobState.DONE
    exit_code: int | None = 0
    error: str | None = None
    infra: bool = False
    ignored: int = 0  # failures that onerror ignore let pass
    steps: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Place:
    """Where a task runs and what its file names mean."""

    task: str
    cwd: Path  # commands run here; node: paths are relative to it (root tasks: RESULTS)
    input_dir: Path  # root-side sources
    values: Mapping[str, Value]  # what the task sees ($name)
    env: Mapping[str, str]  # the commands' environment (and $NAME of non-parameters)
    log: IO[bytes]  # where output goes unless redirected
    node_root: Path | None = None  # the node's directory, node:.. (main, nodestart)
    # task main: keep the node file (BASE, REL) as the root-side output OUT (staged with the
    # job's result): stage(BASE, REL, OUT)
    stage: Callable[[Path, str, str], None] | None = None


_JOB_VARS = frozenset({"VMWU_JOB_ID", "VMWU_JOB_ATTEMPT", "VMWU_WORK_DIR", "VMWU_RESULTS"})
# shell syntax that makes a command more than "program args" (quotes and spaces are fine)
_SHELL_SYNTAX = re.compile(r"[$`;&|<>()*?\[\]~{}!#\\\n]|(^|\s)\w+=")


class _Stream:
    def __init__(self, fd: int | None = None, path: tuple[Path, str] | None = None) -> None:
        self.fd = fd
        self.path = path


class TaskRun:
    """One run of a task's commands. ``infra(code)`` says whether a failing command's code
    is the node's failure (never ignored: the job is retried elsewhere)."""

    def __init__(self, place: Place, infra: Callable[[int], bool] | None = None) -> None:
        self.place = place
        self.infra = infra or (lambda code: False)
        self.child: tools.Process | None = None
        self.policy = "fail"
        self.out = _Stream()
        self.err = _Stream()

    def note(self, text: str) -> None:
        self.place.log.write(f"vmwu: {text}\n".encode(errors="replace"))
        self.place.log.flush()

    def run(self, steps: Sequence[Step]) -> Outcome:
        outcome = Outcome()
        try:
            for number, step in enumerate(steps, start=1):
                t0 = time.time()
                record: dict[str, Any] = {
                    "step": number,
                    "kind": str(step.kind),
                    "at": str(step.where),
                }
                error: str | None = None
                try:
                    code = self.step(step)
                except HostDiskFull:
                    raise  # the node's disk, not the job: no policy ignores it
                except VmwuError as err:
                    code, error = None, str(err)
                except OSError as err:
                    if is_disk_full(err):
                        raise
                    code, error = None, f"{step.where}: {step.kind}: {err.strerror or err}"
                record.update(exit_code=code, seconds=round(time.time() - t0, 3))
                outcome.steps.append(record)
                if error is None and code in (0, None):
                    continue
                if error is None:
                    error = f"{step.where}: {step.written or step.kind} exited with {code}"
                infra = code is not None and self.infra(code)
                if self.policy == "ignore" and not infra:
                    record.update(ignored=True, error=error)
                    outcome.ignored += 1
                    self.note(f"{error} (onerror ignore: going on)")
                    continue
                outcome.state, outcome.exit_code, outcome.error = JobState.FAILED, code, error
                outcome.infra = infra
                break
        finally:
            self.close()
        return outcome

    def close(self) -> None:
        for stream in (self.out, self.err):
            if stream.fd is not None and (stream is self.out or stream.fd != self.out.fd):
                os.close(stream.fd)
        self.out = _Stream()
        self.err = _Stream()

    def step(self, step: Step) -> int | None:
        if step.kind is StepKind.ONERROR:
            self.policy = step.word
            self.note(f"onerror {step.word}")
            return None
        if step.kind is StepKind.REDIRECT:
            self.redirect(step)
            return None
        if step.kind is StepKind.EXECUTE:
            command = step.args[0].render_shell(self.place.values)
            self.note(f"{step.written or 'execute'} {command}")
            pooled = self.vmwu_run_in_pool(command)
            if pooled is not None:
                return pooled
            return self.execute(["sh", "-c", command], step)
        if step.kind is StepKind.EXEC:
            return self.exec(step)
        src, dest = (a.render(self.place.values, env=self.place.env) for a in step.args)
        if step.kind is StepKind.SUBSTITUTE:
            self.substitute(step, src, dest)
        else:
            self.copy(step, src, dest)
        self.note(f"{step.kind} {_show(step.sides[0], src)} {_show(step.sides[1], dest)}")
        return None

    # -- processes --------------------------------------------------------------------------

    def vmwu_run_in_pool(self, command: str) -> int | None:
        """A plain ``vmwu run ...`` command (no shell syntax beyond quoting) with a node
        pool service at hand ($VMWU_POOL, the local executor's): asked of the service
        from this process, without starting a shell and a Python for it (issue 15 §3).
        None: run it the ordinary way (no pool, other syntax, other VMWU_* settings)."""
        from vmwu.run import poolclient

        sock = poolclient.pool_socket()
        if sock is None or _SHELL_SYNTAX.search(command):
            return None
        # the service runs with this process's environment: a step's own VMWU_* setting
        # (a cache, a catalog) is for a vmwu of its own; the job's identity is not one
        for key, value in self.place.env.items():
            if key.startswith(("VMWU_", "XDG_")) and key not in _JOB_VARS:
                if os.environ.get(key) != value:
                    return None
        try:
            words = shlex.split(command)
        except ValueError:
            return None
        if words[:2] != ["vmwu", "run"] or len(words) < 3:
            return None
        reply = poolclient.run_via_pool(sock, words[2:], cwd=self.place.cwd)
        if reply is None or reply.local:
            return None
        err = self.err.fd if self.err.fd is not None else self.place.log.fileno()
        line = f"vmwu: error: {reply.error}" if reply.error is not None else reply.summary
        if line is not None:
            os.write(err, (line + "\n").encode())
        return reply.exit

    def exec(self, step: Step) -> int:
        words = [a.render(self.place.values, env=self.place.env) for a in step.args]
        program, rest = words[0], words[1:]
        argv = rest if step.argv0 else [program, *rest]
        executable = None
        if step.argv0 or not step.search_path:
            executable = program
            if not step.search_path and "/" not in program:
                executable = str(self.place.cwd / program)
        self.note(f"{step.written} {' '.join(_quoted(w) for w in words)}")
        return self.execute(argv, step, executable)

    def execute(self, argv: list[str], step: Step, executable: str | None = None) -> int:
        log = self.place.log.fileno()
        stdout = self.out.fd if self.out.fd is not None else log
        stderr = self.err.fd if self.err.fd is not None else log
        try:
            self.child = spawn(
                argv,
                cwd=self.place.cwd,
                env=self.place.env,
                stdout=stdout,
                stderr=stderr,
                executable=executable,
            )
        except ToolNotFound as exc:
            program = executable or argv[0]
            cause = exc.__cause__
            found = isinstance(cause, OSError) or ("/" in program and Path(program).exists())
            why, failed = ("not executable", 126) if found else ("not found", 127)
            self.note(f"{step.where}: {step.written}: {program}: {why}")
            return failed
        ended = self.child.wait()
        assert ended is not None
        code = ended
        self.child = None
        if code in (-signal.SIGTERM, 128 + signal.SIGTERM):
            # scancel (and `vmwu sweep cancel`) may signal the whole process tree at once:
            # give our own SIGTERM a moment to arrive, so that a cancelled job does not
            # leave a "failed" result behind.
            time.sleep(0.5)
        return 128 - code if code < 0 else code

    def redirect(self, step: Step) -> None:
        mine, other = (self.out, self.err) if step.word == "stdout" else (self.err, self.out)
        if mine.fd is not None and mine.fd != other.fd:
            os.close(mine.fd)
        mine.fd, mine.path = None, None
        if not step.args:
            self.note(f"redirect {step.word} off")
            return
        text = step.args[0].render(self.place.values, env=self.place.env)
        if text == DEV_NULL:
            target: tuple[Path, str] = (Path(os.devnull), "")
        else:
            side = Side.ROOT if self.place.task in ROOT_TASKS else Side.NODE
            target = self.locate(text, side, step)
        if other.path == target and not step.append:
            mine.fd, mine.path = other.fd, target  # both streams into one file, one offset
        elif text == DEV_NULL:
            mine.fd, mine.path = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC), target
        else:
            mine.fd, mine.path = open_output(*target, append=step.append), target
        self.note(f"redirect {step.word} {'append ' if step.append else ''}to {text}")

    # -- files ------------------------------------------------------------------------------

    def locate(self, text: str, side: Side, step: Step) -> tuple[Path, str]:
        """A path of the plan as a trusted directory of vmwu's and a path beneath it
        (:mod:`vmwu.sweep.hostcopy` walks it without following links): node paths stay in
        the node's directories, root paths of root tasks in RESULTS."""
        where = str(step.where)
        if side is Side.ROOT:
            return self.place.cwd, root_relative(text, where)
        root = self.place.node_root
        assert root is not None
        rel = node_relative(text, where)
        if rel == "..":
            return root, ""
        if rel.startswith("../"):
            return root, rel[3:]
        inside = str(self.place.cwd.relative_to(root))
        return root, inside if rel == "." else f"{inside}/{rel}"

    def source(self, step: Step, side: Side, text: str) -> tuple[Path, str]:
        if side is Side.NODE:
            base, rel = self.locate(text, side, step)
            if kind_of(base, rel) is None:
                raise BadInput(f"{step.where}: {step.kind}: node:{text} was not produced")
            return base, rel
        path = source_path(text, self.place.input_dir)
        if not path.exists():
            raise BadInput(f"{step.where}: {step.kind}: {path} does not exist")
        path = path.resolve()  # the user's own files: their links are theirs
        return path.parent, path.name

    def target(self, step: Step, side: Side, text: str, name: str) -> tuple[Path, str]:
        """Where a copy or substitute lands: into a directory when the destination is one
        (``node:..``, ``.``, ``DIR/``, an existing directory), keeping the source's name."""
        base, rel = self.locate(text, side, step)
        if text.endswith("/") or text in ("", ".", "..") or kind_of(base, rel) == stat.S_IFDIR:
            rel = f"{rel}/{name}" if rel else name
        return base, rel

    def copy(self, step: Step, src: str, dest: str) -> None:
        s_src, s_dest = step.sides
        base, rel = self.source(step, s_src, src)
        if s_dest is Side.ROOT and self.place.stage is not None:
            self.place.stage(base, rel, root_output(dest, src, str(step.where)))
            return
        d_base, d_rel = self.target(step, s_dest, dest, PurePosixPath(rel).name)
        skipped = copy_untrusted(base, rel, d_base, d_rel)
        if skipped:
            self.note(f"{step.where}: copy skipped: {'; '.join(skipped)}")

    def substitute(self, step: Step, src: str, dest: str) -> None:
        base, rel = self.source(step, step.sides[0], src)
        data = read_file(base, rel) if step.sides[0] is Side.NODE else (base / rel).read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput(f"{step.where}: substitute: {src} is not UTF-8 text") from None
        d_base, d_rel = self.target(step, step.sides[1], dest, PurePosixPath(rel).name)
        write_file(d_base, d_rel, substitute_text(text, self.place.values).encode("utf-8"))


_NAME_REF = re.compile(r"\$\{(" + IDENT.pattern + r")\}|\$(" + IDENT.pattern + ")")


def substitute_text(text: str, values: Mapping[str, Value]) -> str:
    """A skeleton file with ``$name`` and ``${name}`` of the task's names replaced by their
    values; everything else (``$HOME``, ``$1``, ``${x:-y}``) stays as it is."""

    def one(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        return format_value(values[name]) if name in values else match[0]

    return _NAME_REF.sub(one, text)


def _show(side: Side, text: str) -> str:
    return f"node:{text}" if side is Side.NODE else text


def _quoted(word: str) -> str:
    return shlex.quote(word)
