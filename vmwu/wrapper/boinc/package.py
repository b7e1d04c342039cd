"""``vmwu wrap package``: what a BOINC project ships to run a job.xml with vmwu.

Writes into one directory, for one platform (this host's: PyInstaller cannot
cross-build):

- ``vmwu-wrap_VERSION_PLATFORM``: the wrapper as **one self-contained executable** (a
  PyInstaller one-file build of ``vmwu wrap``; dask, distributed and matplotlib, which
  only sweeps use, left out). BOINC ships an app version as a flat list of files, each
  linked into the slot by name, so a one-folder build (hundreds of files in
  subdirectories) would have to travel as an archive and be unpacked by every task; the
  one-file build unpacks itself at each start instead, about half a second, once per
  task run of a job that runs for minutes or hours (docs/boinc.md);
- ``job.xml``: the job file, as given (the wrapper finds it through its logical name);
- every file the job names as ``$PROJECT_DIR/NAME`` (scripts, archives, units) and every
  unit (``<virtualmachine>NAME.ova``), copied under its own name: app version files land
  in the project directory, and the client links each into the slot under that name;
- ``vmwu-base-SHA256``: each base file a unit references by sha256 instead of embedding
  it, taken from the catalog; the wrapper puts it into the volunteer's node cache;
- ``app_info.xml``: the app version for the anonymous platform (copy the directory's
  files into the client's ``projects/HOST_PORT/``);
- ``version.xml``: the same app version for a BOINC server's ``bin/update_versions``;
- ``package.json``: every file with its size and sha256 (``md5`` too: what a BOINC
  server's ``update_versions`` and ``<file_info>`` want).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import vmwu
from vmwu import __version__, tools
from vmwu.errors import BadInput, BaseNotFound
from vmwu.wrapper.jobxml import JobDesc, TaskSpec, load_job

PLATFORMS = {"x86_64": "x86_64-pc-linux-gnu", "aarch64": "aarch64-unknown-linux-gnu"}
API_VERSION = "7.20.0"  # >= 6: the client gives the app a boinc_mmap_file
# Only sweeps use these (matplotlib brings numpy and PIL); the wrapper never imports them.
EXCLUDED_MODULES = (
    "vmwu.sweep",
    "dask",
    "distributed",
    "matplotlib",
    "numpy",
    "PIL",
    "pandas",
    "psutil",
    "yaml",
    "tkinter",
    "IPython",
)
_PROJECT_FILE = re.compile(r"\$PROJECT_DIR/([^/\s\"']+)")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")

ENTRY = """\
# The entry point of the packaged wrapper (vmwu/wrapper/boinc/package.py).
import sys

if sys.argv[1:2] == ["--vmwu-process-guard"]:
    # vmwu's process guard (vmwu/guard.py): the wrapper starts every program (QEMU, host
    # tasks) under a guard, which in a frozen vmwu is this executable again
    from vmwu.guard import dispatch

    dispatch()

from vmwu.wrapper.boinc.main import main

raise SystemExit(main())
"""


def host_platform() -> str:
    machine = platform.machine()
    if sys.platform != "linux" or machine not in PLATFORMS:
        raise BadInput(f"vmwu wrap package builds for Linux on x86_64 or aarch64, not {machine}")
    return PLATFORMS[machine]


@dataclass(frozen=True)
class Shipped:
    name: str  # the file's name in the package, the project directory and the slot
    source: Path
    executable: bool = False
    main_program: bool = False


def _check_name(name: str, where: str) -> str:
    if not _NAME.match(name) or ".." in name or len(name) > 200:
        raise BadInput(
            f"{where}: {name!r} cannot be a BOINC file name",
            hint="use letters, digits, '.', '_', '+' and '-'",
        )
    return name


def _task_fields(task: TaskSpec) -> list[str]:
    fields = [task.application or "", *task.command_line, task.stdin_filename or ""]
    fields += [*task.copy_file_to_vm, task.virtualmachine or "", task.image or ""]
    return fields


def job_files(job: JobDesc, job_dir: Path) -> list[Shipped]:
    """The files a job needs from the project: ``$PROJECT_DIR/NAME`` in any field, and
    the units its VM tasks name."""
    found: dict[str, Shipped] = {}
    tasks = [*job.unzip_tasks, *job.daemons, *job.tasks]
    for task in tasks:
        where = task.where(job.source)
        names = [m.group(1) for f in _task_fields(task) for m in _PROJECT_FILE.finditer(f)]
        if task.is_vm:
            vm = task.virtualmachine or ""
            if not task.is_unit:
                raise BadInput(
                    f"{where}: <virtualmachine>{vm}</virtualmachine> names a catalog base, "
                    "which a volunteer's host does not have",
                    hint="pack the task's unit with `vmwu pack` and name the .ova instead",
                )
            names.append(vm.removeprefix("$PROJECT_DIR/"))
        for name in names:
            _check_name(name, where)
            src = job_dir / name
            if not src.is_file():
                raise BadInput(f"{where}: {name} is not a file in {job_dir}")
            found.setdefault(name, Shipped(name, src, executable=os.access(src, os.X_OK)))
    return list(found.values())


def base_files(units: list[Path], catalog: Path | None) -> list[Shipped]:
    """``vmwu-base-SHA256`` for each base file the units reference instead of embedding."""
    from vmwu.bases.catalog import Catalog
    from vmwu.unit.reader import OvaReader

    shipped: dict[str, Shipped] = {}
    for unit in units:
        with OvaReader(unit) as reader:
            desc = reader.descriptor
        for f in desc.files:
            if f.embedded or f.sha256 in shipped:
                continue
            source = Catalog.open(catalog).find_file(f.sha256)
            if source is None:
                raise BaseNotFound(
                    f"{unit.name} references base '{desc.base.name}' ({f.role}, sha256 "
                    f"{f.sha256[:16]}…), which is not in the catalog here",
                    hint="build or add the base, or pack the unit with --embed-base",
                )
            shipped[f.sha256] = Shipped(f"vmwu-base-{f.sha256}", source)
    return list(shipped.values())


def build_executable(name: str, out: Path) -> Path:
    """PyInstaller's one-file build of the wrapper, as ``out/name``."""
    if importlib.util.find_spec("PyInstaller") is None:
        raise BadInput(
            "PyInstaller is not installed, so the wrapper cannot be built",
            hint="pip install 'vmwu[package]', or pass --executable FILE",
        )
    with tempfile.TemporaryDirectory(prefix="vmwu-package-") as tmp:
        work = Path(tmp)
        entry = work / "vmwu_wrap_entry.py"
        entry.write_text(ENTRY)
        argv: list[str | os.PathLike[str]] = [
            sys.executable,
            "-m",
            "PyInstaller",
            "--onefile",
            # unpack into the working directory (the BOINC slot) rather than /tmp, which
            # hardened hosts mount noexec; the client removes a leftover with the slot
            "--runtime-tmpdir",
            ".",
            "--noconfirm",
            "--clean",
            "--log-level",
            "WARN",
            "--name",
            name,
            "--distpath",
            work / "dist",
            "--workpath",
            work / "build",
            "--specpath",
            work,
            # where vmwu's own sources are (an editable install's import hook is not
            # something PyInstaller's analysis follows)
            "--paths",
            Path(vmwu.__file__).parent.parent,
            "--collect-data",
            "vmwu",
            "--hidden-import",
            "vmwu.wrapper.cli",
        ]
        for module in EXCLUDED_MODULES:
            argv += ["--exclude-module", module]
        argv.append(entry)
        tools.run(argv, cwd=work, disk_hint=os.fspath(work))
        built = work / "dist" / name
        dest = out / name
        shutil.copy2(built, dest)
    dest.chmod(0o755)
    return dest


def _digests(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file, for the package's file list."""
    with open(path, "rb") as fh:
        sha = hashlib.file_digest(fh, "sha256")
        fh.seek(0)
        md5 = hashlib.file_digest(fh, "md5")
    return sha.hexdigest(), md5.hexdigest()


def app_info_xml(app: str, version_num: int, plat: str, files: list[Shipped]) -> str:
    """The anonymous platform's ``app_info.xml``: one app, one app version whose main
    program is the wrapper and whose other files are linked into the slot by name."""
    infos = []
    refs = []
    for f in files:
        exe = "<executable/>" if f.executable else ""
        infos.append(f"  <file_info><name>{f.name}</name>{exe}</file_info>")
        role = "<main_program/>" if f.main_program else f"<open_name>{f.name}</open_name>"
        refs.append(f"    <file_ref><file_name>{f.name}</file_name>{role}</file_ref>")
    return "\n".join(
        [
            "<app_info>",
            f"  <app><name>{app}</name></app>",
            *infos,
            "  <app_version>",
            f"    <app_name>{app}</app_name>",
            f"    <version_num>{version_num}</version_num>",
            f"    <platform>{plat}</platform>",
            f"    <api_version>{API_VERSION}</api_version>",
            *refs,
            "  </app_version>",
            "</app_info>",
            "",
        ]
    )


def version_xml(files: list[Shipped]) -> str:
    """``version.xml`` for a BOINC server's ``bin/update_versions`` (the files go into
    ``apps/APP/VERSION/PLATFORM/`` beside it). ``api_version`` is given because the
    executable holds no ``API_VERSION_`` string for update_versions to find, and without
    one >= 6 the client offers no ``boinc_mmap_file``. ``dont_throttle``: the client's CPU
    throttle would suspend and resume the VM every few seconds; QEMU already runs at the
    client's idle priority."""
    lines = ["<version>"]
    for f in files:
        lines.append("  <file>")
        lines.append(f"    <physical_name>{f.name}</physical_name>")
        lines.append(
            "    <main_program/>"
            if f.main_program
            else f"    <logical_name>{f.name}</logical_name>"
        )
        lines.append("  </file>")
    lines += [f"  <api_version>{API_VERSION}</api_version>", "  <dont_throttle/>", "</version>", ""]
    return "\n".join(lines)


def package(
    job_path: Path,
    out: Path,
    *,
    app: str = "vmwu",
    version_num: int = 100,
    executable: Path | None = None,
    catalog: Path | None = None,
) -> dict[str, object]:
    """Write the package for ``job_path`` into ``out``; returns what ``package.json``
    holds."""
    _check_name(app, "--app-name")
    plat = host_platform()
    job_path = job_path.absolute()
    job = load_job(job_path)
    files = job_files(job, job_path.parent)
    units = [f.source for f in files if f.name.endswith(".ova")]
    files += base_files(units, catalog)
    if out.exists() and any(out.iterdir()):
        raise BadInput(f"{out} is not empty", hint="give a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    exe_name = f"vmwu-wrap_{version_num}_{plat}"
    if executable is not None:
        if not executable.is_file():
            raise BadInput(f"--executable {executable} is not a file")
        shutil.copy2(executable, out / exe_name)
        (out / exe_name).chmod(0o755)
    else:
        build_executable(exe_name, out)
    main = Shipped(exe_name, out / exe_name, executable=True, main_program=True)
    shipped = [main, Shipped("job.xml", job_path), *files]
    for f in shipped[1:]:
        dest = out / f.name
        shutil.copy2(f.source, dest)
    (out / "app_info.xml").write_text(app_info_xml(app, version_num, plat, shipped))
    (out / "version.xml").write_text(version_xml(shipped))
    manifest: dict[str, object] = {
        "app": app,
        "version_num": version_num,
        "platform": plat,
        "api_version": API_VERSION,
        "vmwu_version": __version__,
        "files": [],
    }
    entries = []
    for f in shipped:
        sha, md5 = _digests(out / f.name)
        entries.append(
            {
                "name": f.name,
                "size": (out / f.name).stat().st_size,
                "sha256": sha,
                "md5": md5,
                "executable": f.executable,
                "main_program": f.main_program,
            }
        )
    manifest["files"] = entries
    (out / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
