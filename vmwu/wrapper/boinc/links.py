"""BOINC's logical file names: the soft-link files the client puts in a slot directory.

For every file of a job (the app's files, the inputs, the outputs) the client writes a
small file named by the file's *logical* name into the slot, holding one line::

    <soft_link>../../projects/HOST_PORT/PHYSICAL</soft_link>

An app finds the real (*physical*) file with ``boinc_resolve_filename`` (api/boinc_api.cpp,
``resolve_soft_link`` in lib/app_ipc.cpp): read the first line of the logical file (at
most 512 bytes); if it is a ``<soft_link>``, its text is the path, relative to the slot;
otherwise (no such file, a real symbolic link, a file the client copied in with
``<copy_file/>``) the logical name is the path.

Projects can also have the client make real symbolic links instead (``use_symlinks``);
both kinds are handled alike.

vmwu adds one rule: a link must stay inside the project directory that
``init_data.xml`` names (symbolic links on the way resolved). A link that points anywhere
else is refused with an error: the client never writes one, so the slot has been tampered
with, and following it would let a job read or overwrite files of the volunteer's.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from vmwu.errors import BadInput

FIRST_LINE_MAX = 512
_SOFT_LINK = re.compile(r"<soft_link>(.*?)</soft_link>")
RESOLVE_PHRASE = "boinc_resolve("


def soft_link_target(data: bytes) -> str | None:
    """The target in a soft-link file's first bytes, or None when it is not one.

    As ``resolve_soft_link``: the first line (at most 512 bytes) must hold
    ``<soft_link>TARGET</soft_link>``; TARGET is taken as it is (no unescaping)."""
    first = data[:FIRST_LINE_MAX].split(b"\n", 1)[0]
    match = _SOFT_LINK.search(first.decode("utf-8", errors="replace"))
    if match is None:
        return None
    target = match.group(1).strip()
    return target or None


def read_soft_link(path: Path) -> str | None:
    """The target of the soft-link file at ``path``; None when ``path`` is missing, a
    symbolic link, not a regular file, or not a soft link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return soft_link_target(os.read(fd, FIRST_LINE_MAX))
    finally:
        os.close(fd)


def is_logical_name(name: str) -> bool:
    """A name the client may have put in the slot: one path component."""
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name


class LogicalNames:
    """Resolves logical names in ``slot`` to files inside ``project_dir``."""

    def __init__(self, slot: Path, project_dir: Path) -> None:
        self.slot = slot.absolute()
        self.project_dir = project_dir
        self._project_real = Path(os.path.realpath(project_dir))

    def _check(self, name: str, target: str) -> Path:
        real = Path(os.path.realpath(self.slot / target))
        if real != self._project_real and not real.is_relative_to(self._project_real):
            raise BadInput(
                f"{self.slot / name}: its soft link {target[:200]!r} leads outside the project "
                f"directory {self.project_dir}",
                hint="the BOINC client never writes such a link; reset the project",
            )
        return real

    def resolve(self, name: str) -> str:
        """``boinc_resolve_filename``: the path (relative to the slot, as the link says)
        of the file a logical name stands for; ``name`` itself when it is no soft link."""
        if not is_logical_name(name):
            return name
        target = read_soft_link(self.slot / name)
        if target is None:
            return name
        self._check(name, target)
        return target

    def physical(self, name: str) -> Path:
        """The absolute path of the file ``name`` stands for (the slot file itself when it
        is no soft link)."""
        if not is_logical_name(name):
            return self.slot / name
        target = read_soft_link(self.slot / name)
        if target is None:
            return self.slot / name
        return self._check(name, target)

    def links(self) -> dict[str, str]:
        """Every link directly in the slot, logical name -> target: the client's soft-link
        files, and the symbolic links it makes instead for projects that ask for them
        (``use_symlinks``) or that :meth:`materialize` made."""
        found: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError), os.scandir(self.slot) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_symlink():
                    target: str | None = os.readlink(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    target = read_soft_link(Path(entry.path))
                else:
                    target = None
                if target is not None:
                    self._check(entry.name, target)
                    found[entry.name] = target
        return found

    def materialize(self) -> tuple[dict[str, str], dict[str, str]]:
        """Prepare the slot for programs that know nothing of BOINC (host tasks, the
        wrapper's own file handling); returns (inputs, outputs), name -> target.

        A link whose file exists (an input, a file of the app version) becomes a symbolic
        link to it, so that reading the logical name reads the project's file. A link
        whose file does not exist yet is an output: its link is removed, so that the job
        writes a regular file of that name in the slot (vmwu writes into the slot without
        following links), and :meth:`promote` moves it to the physical file at the end.
        Each replacement is atomic (a new link renamed over the old). BOINC's own resolver
        takes a symbolic link as the file itself, and the client removes links without
        following them when it cleans the slot."""
        inputs: dict[str, str] = {}
        outputs: dict[str, str] = {}
        for name, target in self.links().items():
            path = self.slot / name
            if os.path.isfile(self.slot / target):
                inputs[name] = target
                if not path.is_symlink():
                    tmp = self.slot / f".{name}.vmwu-link"
                    tmp.unlink(missing_ok=True)
                    os.symlink(target, tmp)
                    os.replace(tmp, path)
            else:
                outputs[name] = target
                path.unlink()
        return inputs, outputs

    def promote(self, outputs: dict[str, str]) -> tuple[list[str], list[str]]:
        """Move each output the job wrote into the slot (a regular file of the logical
        name) to its physical file, which the client uploads; returns (moved, missing)."""
        moved, missing = [], []
        for name, target in sorted(outputs.items()):
            path = self.slot / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not os.path.isfile(self.slot / target):
                    missing.append(name)
                continue
            if not stat.S_ISREG(st.st_mode):
                missing.append(name)
                continue
            physical = self._check(name, target)
            os.replace(path, physical)
            moved.append(name)
        return moved, missing

    def resolve_args(self, args: list[str], where: str = "command line") -> list[str]:
        """BOINC's wrapper: every ``boinc_resolve(NAME)`` in an argument is replaced by
        the path NAME resolves to."""
        return resolve_phrases(args, self.resolve, where)


def resolve_phrases(args: Sequence[str], resolve: Callable[[str], str], where: str) -> list[str]:
    """Each ``boinc_resolve(NAME)`` in ``args`` replaced by ``resolve(NAME)``, as BOINC's
    wrapper does to a task's command line (samples/wrapper/wrapper.cpp, TASK::run): NAME
    runs to the first ``)``; a phrase without one is an error. The text put in is not
    searched again."""
    out = []
    for arg in args:
        parts: list[str] = []
        rest = arg
        while (start := rest.find(RESOLVE_PHRASE)) >= 0:
            end = rest.find(")", start)
            if end < 0:
                raise BadInput(f"{where}: missing ')' after 'boinc_resolve(' in {arg[:200]!r}")
            parts += [rest[:start], resolve(rest[start + len(RESOLVE_PHRASE) : end])]
            rest = rest[end + 1 :]
        out.append("".join(parts) + rest)
    return out
