"""The base-image catalog: the thesis's "Virtual Machine Disk Database" (section 5.2.3).

One SQLite file (``paths.catalog_path``) with two tables:

- ``bases``: the thesis's Table 5.1 fields (``id``, ``name``, ``description``, ``location``,
  ``architecture``, ``guest_os``, ``filesystem``, ``input_device``, ``output_device``,
  ``cdrom_device``, ``script_template``, ``date_added``) plus what booting a base needs
  today: ``sha256`` (the base's identity, see :func:`base_identity`), ``size`` (bytes of
  all its files), ``format`` (qcow2/raw/vmdk, or ``direct-kernel``), ``boot_method``,
  ``agent_version``, ``cmdline`` (kernel command line for direct boot) and
  ``cdrom_as_hard_disk``;
- ``base_files``: the files of each base (``kernel``, ``initrd``, ``base-disk``), each with
  its path, sha256, size and format, so a unit that references a file by sha256 can be
  resolved on the node.

Several ``vmwu`` processes on one node use the file at once: each operation opens its own
short connection with a busy timeout, the journal is WAL (readers never block the writer),
and writes are ``BEGIN IMMEDIATE`` transactions. WAL needs a local file system (not NFS);
point ``--catalog``/``VMWU_CATALOG`` at local disk. The schema version is
``PRAGMA user_version``. Opening does no I/O; a missing catalog reads as empty and is
created, with its parent directories, by the first write.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from vmwu import paths
from vmwu.arch import canonical_arch, guest_can_run, os_matches, parse_os
from vmwu.errors import BadInput, BaseNotFound, HostDiskFull, HostFailure
from vmwu.guest.protocol import AGENT_VERSION, agent_version_text, parse_agent_version
from vmwu.unit.model import BASE_ROLES, BootMethod, FileRole

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"  # UTC, as the thesis's VMD_DATE_ADDED
MIN_SHA_PREFIX = 4
DISK_FORMATS = ("qcow2", "raw", "vmdk")
DIRECT_KERNEL_FORMAT = "direct-kernel"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bases (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    name               TEXT    NOT NULL UNIQUE,
    description        TEXT    NOT NULL DEFAULT '',
    location           TEXT    NOT NULL,
    architecture       TEXT    NOT NULL,
    guest_os           TEXT    NOT NULL,
    filesystem         TEXT    NOT NULL DEFAULT '',
    input_device       TEXT    NOT NULL DEFAULT '',
    output_device      TEXT    NOT NULL DEFAULT '',
    cdrom_device       TEXT    NOT NULL DEFAULT '',
    script_template    TEXT,
    date_added         TEXT    NOT NULL,
    sha256             TEXT    NOT NULL,
    size               INTEGER NOT NULL,
    format             TEXT    NOT NULL,
    boot_method        TEXT    NOT NULL CHECK (boot_method IN ('direct-kernel', 'disk')),
    agent_version      TEXT    NOT NULL DEFAULT '',
    cmdline            TEXT    NOT NULL DEFAULT '',
    cdrom_as_hard_disk INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS bases_sha256 ON bases (sha256);
CREATE TABLE IF NOT EXISTS base_files (
    base_id INTEGER NOT NULL REFERENCES bases (id) ON DELETE CASCADE,
    role    TEXT    NOT NULL CHECK (role IN ('kernel', 'initrd', 'base-disk')),
    path    TEXT    NOT NULL,
    sha256  TEXT    NOT NULL,
    size    INTEGER NOT NULL,
    format  TEXT    NOT NULL,
    PRIMARY KEY (base_id, role)
);
CREATE INDEX IF NOT EXISTS base_files_sha256 ON base_files (sha256);
"""

_BASE_COLUMNS = (
    "name",
    "description",
    "location",
    "architecture",
    "guest_os",
    "filesystem",
    "input_device",
    "output_device",
    "cdrom_device",
    "script_template",
    "date_added",
    "sha256",
    "size",
    "format",
    "boot_method",
    "agent_version",
    "cmdline",
    "cdrom_as_hard_disk",
)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")

CORRUPT_HINT = "point --catalog or VMWU_CATALOG at another file, or move this one away"


def now_utc() -> str:
    """The current time in the catalog's ``date_added`` form."""
    return datetime.datetime.now(datetime.UTC).strftime(DATE_FORMAT)


@dataclass(frozen=True)
class BaseFile:
    """One file of a base: its ``role`` (a :class:`FileRole` value: kernel, initrd or
    base-disk), where it is on this node, its sha256, size in bytes and format (qcow2, raw,
    vmdk for disks; bzimage, cpio for kernel and initrd). ``role`` may be given as a plain
    string; it is stored as a :class:`FileRole`."""

    role: str
    path: Path
    sha256: str
    size: int
    format: str

    def __post_init__(self) -> None:
        try:
            role = FileRole(self.role)
        except ValueError:
            role = None
        if role not in BASE_ROLES:
            roles = ", ".join(r.value for r in BASE_ROLES)
            raise BadInput(f"bad base file role {self.role!r}: expected one of {roles}")
        object.__setattr__(self, "role", role)
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "sha256", self.sha256.lower())

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": str(self.role),
            "path": str(self.path),
            "sha256": self.sha256,
            "size": self.size,
            "format": self.format,
        }


@dataclass(frozen=True, kw_only=True)
class BaseImage:
    """One row of the catalog with its files. ``id`` is ``None`` until the base is added.

    ``boot_method`` may be given as a plain string; it is stored as a :class:`BootMethod`.
    ``script_template`` ``None`` means the built-in default template.
    """

    id: int | None = None
    name: str
    location: str
    architecture: str
    guest_os: str
    sha256: str
    size: int = 0
    format: str = DIRECT_KERNEL_FORMAT
    boot_method: str = BootMethod.DIRECT_KERNEL
    description: str = ""
    filesystem: str = "ext4"
    input_device: str = "LABEL=VMWU-APP"
    output_device: str = "LABEL=VMWU-OUT"
    cdrom_device: str = "LABEL=VMWU-INST"
    script_template: str | None = None
    date_added: str = ""
    agent_version: int | None = AGENT_VERSION  # None: no vmwu agent (an imported image)
    cmdline: str = ""
    cdrom_as_hard_disk: bool = True
    files: tuple[BaseFile, ...] = field(default=())

    def __post_init__(self) -> None:
        try:
            boot = BootMethod(self.boot_method)
        except ValueError:
            methods = ", ".join(m.value for m in BootMethod)
            raise BadInput(
                f"base '{self.name}': bad boot method {self.boot_method!r}: expected one of "
                f"{methods}"
            ) from None
        object.__setattr__(self, "boot_method", boot)
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "sha256", self.sha256.lower())

    def file(self, role: FileRole | str) -> BaseFile | None:
        """The file of ``role`` (kernel, initrd, base-disk), or ``None``."""
        for f in self.files:
            if f.role == role:
                return f
        return None

    @property
    def summary(self) -> str:
        """``tiny (x86_64, linux6.1)``: how error messages name a base."""
        return f"{self.name} ({self.architecture}, {self.guest_os})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``vmwu base list/show --json``)."""
        data = asdict(self)
        data["boot_method"] = str(self.boot_method)
        data["agent_version"] = agent_version_text(self.agent_version)
        data["files"] = [f.to_dict() for f in self.files]
        return data


def base_identity(files: Iterable[BaseFile]) -> str:
    """The sha256 that identifies a base (catalog ``sha256``; units reference their base by it).

    - one file: that file's sha256, so a single-disk base is named by the digest of its disk;
    - several files: the sha256 of the UTF-8 text made of one line ``"{role} {sha256}\\n"``
      per file, sorted by role (``base-disk`` < ``initrd`` < ``kernel``), digests in
      lowercase hex. Paths, sizes and formats do not count: the same bytes anywhere are the
      same base.

    Raises :class:`BadInput` for no files or a role given twice.
    """
    items = list(files)
    if not items:
        raise BadInput("a base needs at least one file (a disk, or a kernel)")
    roles = [str(f.role) for f in items]
    if len(set(roles)) != len(roles):
        raise BadInput(f"a base has one file per role, got roles {', '.join(sorted(roles))}")
    if len(items) == 1:
        return items[0].sha256.lower()
    text = "".join(f"{f.role} {f.sha256.lower()}\n" for f in sorted(items, key=lambda f: f.role))
    return hashlib.sha256(text.encode()).hexdigest()


def _validate(base: BaseImage) -> BaseImage:
    """Check a base before it is written; returns it with its architecture canonical, its
    paths absolute and ``date_added``/``size`` filled in."""
    name = base.name.strip()
    where = f"base '{base.name}'"
    if not name or name != base.name or any(c in name for c in "\n\r\t"):
        raise BadInput(f"bad base name {base.name!r}: it must be non-empty, on one line")
    if name.isdigit():
        raise BadInput(f"bad base name {name!r}: a name of digits would hide the base IDs")
    parse_os(base.guest_os)
    for f in base.files:
        if not _HEX64.fullmatch(f.sha256):
            raise BadInput(f"{where}: file {f.path} has a bad sha256 {f.sha256!r}")
        if f.size < 0:
            raise BadInput(f"{where}: file {f.path} has a negative size")
    identity = base_identity(base.files)
    if base.sha256 != identity:
        raise BadInput(
            f"{where}: sha256 {base.sha256[:16]}… is not the identity of its files "
            f"({identity[:16]}…)",
            hint="compute it with vmwu.bases.catalog.base_identity",
        )
    needed = FileRole.KERNEL if base.boot_method == BootMethod.DIRECT_KERNEL else FileRole.BASE_DISK
    if base.file(needed) is None:
        raise BadInput(f"{where}: boot method {base.boot_method} needs a {needed} file")
    if base.file(FileRole.INITRD) is not None and base.file(FileRole.KERNEL) is None:
        raise BadInput(f"{where}: an initrd needs a kernel")
    return replace(
        base,
        location=os.path.abspath(base.location) if base.location else "",
        files=tuple(replace(f, path=f.path.absolute()) for f in base.files),
        architecture=canonical_arch(base.architecture),
        date_added=base.date_added or now_utc(),
        size=base.size or sum(f.size for f in base.files),
    )


_CONVERTED = ("cdrom_as_hard_disk", "agent_version")


def _row_agent_version(row: sqlite3.Row) -> int | None:
    """A row's ``agent_version`` text ("1", "none", or "" in old rows) as a version."""
    try:
        return parse_agent_version(row["agent_version"])
    except ValueError as exc:
        raise BadInput(f"base '{row['name']}' in the catalog: {exc}", hint=CORRUPT_HINT) from None


def _column_value(base: BaseImage, column: str) -> Any:
    value = getattr(base, column)
    if column == "cdrom_as_hard_disk":
        return int(value)
    if column == "boot_method":
        return str(value)
    if column == "agent_version":
        return agent_version_text(value)
    return value


class Catalog:
    """The base catalog in one SQLite file. ``Catalog.open()`` uses ``paths.catalog_path``
    (``--catalog``, ``VMWU_CATALOG``, ``<data>/catalog.sqlite``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> Catalog:
        """The catalog at ``path`` (or the default one). Does no I/O: problems with the file
        are reported by the first operation."""
        return cls(paths.catalog_path(path))

    def __repr__(self) -> str:
        return f"Catalog({str(self.path)!r})"

    # -- connections ------------------------------------------------------------------------

    def _fail(self, exc: sqlite3.Error) -> Exception:
        """Turn an SQLite error into a vmwu error naming the file."""
        code = getattr(exc, "sqlite_errorname", "")
        if code in ("SQLITE_NOTADB", "SQLITE_CORRUPT") or "not a database" in str(exc):
            return BadInput(
                f"the catalog {self.path} is not a vmwu catalog (not an SQLite database, "
                f"or corrupt: {exc})",
                hint=CORRUPT_HINT,
            )
        if code == "SQLITE_FULL":
            return HostDiskFull(str(self.path))
        if code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            return HostFailure(
                f"the catalog {self.path} stayed locked for {BUSY_TIMEOUT_S:.0f}s: {exc}",
                hint="another vmwu process holds it; try again",
            )
        return HostFailure(f"cannot use the catalog {self.path}: {exc}")

    def _connect(self, *, write: bool) -> sqlite3.Connection:
        if self.path.is_dir():
            raise BadInput(
                f"the catalog {self.path} is a directory", hint="give --catalog a file name"
            )
        if write:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise HostFailure(
                    f"cannot create the directory of the catalog {self.path}: {exc.strerror}"
                ) from exc
            target = str(self.path)
            uri = False
        else:
            target = self.path.absolute().as_uri() + "?mode=ro"
            uri = True
        conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=uri)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            version = self._check_schema(conn)
            if write:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                if version < SCHEMA_VERSION:
                    self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_schema(self, conn: sqlite3.Connection) -> int:
        """The file's schema version (0: empty database, no tables yet). Reads the version
        and the table list in one snapshot: another process may be creating the schema."""
        if not conn.in_transaction:
            conn.execute("BEGIN")
            try:
                return self._check_schema(conn)
            finally:
                conn.execute("COMMIT")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise BadInput(
                f"the catalog {self.path} has schema version {version}, newer than this "
                f"vmwu understands ({SCHEMA_VERSION})",
                hint="upgrade vmwu, or point --catalog/VMWU_CATALOG at another file",
            )
        if version == 0:
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if tables - {"sqlite_sequence"}:
                raise BadInput(
                    f"the catalog {self.path} is an SQLite database but not a vmwu catalog "
                    f"(it has tables {', '.join(sorted(tables))})",
                    hint=CORRUPT_HINT,
                )
        return version

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self._check_schema(conn) < SCHEMA_VERSION:  # another process may have won
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        """A read-only connection inside a read transaction (one consistent snapshot), or
        ``None`` when there is no catalog yet (reads as empty)."""
        if not self.path.exists():
            yield None
            return
        try:
            with closing(self._connect(write=False)) as conn:
                conn.execute("BEGIN")  # one snapshot for bases and their files
                try:
                    if int(conn.execute("PRAGMA user_version").fetchone()[0]) == 0:
                        yield None
                    else:
                        yield conn
                finally:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A connection inside a ``BEGIN IMMEDIATE`` transaction, committed on success."""
        try:
            with closing(self._connect(write=True)) as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    # -- reading rows -----------------------------------------------------------------------

    @staticmethod
    def _load(
        conn: sqlite3.Connection, where: str = "", args: tuple[Any, ...] = ()
    ) -> list[BaseImage]:
        rows = conn.execute(f"SELECT * FROM bases {where} ORDER BY id", args).fetchall()
        if not rows:
            return []
        ids = [row["id"] for row in rows]
        marks = ", ".join("?" * len(ids))
        files: dict[int, list[BaseFile]] = {i: [] for i in ids}
        for f in conn.execute(
            f"SELECT * FROM base_files WHERE base_id IN ({marks}) ORDER BY base_id, role", ids
        ):
            files[f["base_id"]].append(
                BaseFile(
                    role=f["role"],
                    path=Path(f["path"]),
                    sha256=f["sha256"],
                    size=f["size"],
                    format=f["format"],
                )
            )
        return [
            BaseImage(
                id=row["id"],
                **{c: row[c] for c in _BASE_COLUMNS if c not in _CONVERTED},
                agent_version=_row_agent_version(row),
                cdrom_as_hard_disk=bool(row["cdrom_as_hard_disk"]),
                files=tuple(files[row["id"]]),
            )
            for row in rows
        ]

    def _select(self, where: str = "", args: tuple[Any, ...] = ()) -> list[BaseImage]:
        with self._reading() as conn:
            return [] if conn is None else self._load(conn, where, args)

    # -- public API -------------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        return bool(self._select("WHERE name = ?", (name,)))

    def add(self, base: BaseImage, *, replace: bool = False) -> BaseImage:
        """Store ``base`` (its ``id`` is ignored) and return it as stored, with its id.

        The architecture is stored canonical (``amd64`` -> ``x86_64``); an empty
        ``date_added`` becomes now (UTC), a zero ``size`` the sum of the files' sizes. With
        ``replace``, a base of the same name is overwritten in place and keeps its id;
        without, a taken name is a :class:`BadInput`.
        """
        base = _validate(base)
        values = tuple(_column_value(base, c) for c in _BASE_COLUMNS)
        with self._writing() as conn:
            row = conn.execute("SELECT id FROM bases WHERE name = ?", (base.name,)).fetchone()
            if row is not None and not replace:
                raise BadInput(
                    f"base '{base.name}' already exists in {self.path}", hint="use --replace"
                )
            if row is not None:
                base_id = int(row["id"])
                sets = ", ".join(f"{c} = ?" for c in _BASE_COLUMNS)
                conn.execute(f"UPDATE bases SET {sets} WHERE id = ?", (*values, base_id))
                conn.execute("DELETE FROM base_files WHERE base_id = ?", (base_id,))
            else:
                cols = ", ".join(_BASE_COLUMNS)
                marks = ", ".join("?" * len(_BASE_COLUMNS))
                cur = conn.execute(f"INSERT INTO bases ({cols}) VALUES ({marks})", values)
                assert cur.lastrowid is not None
                base_id = cur.lastrowid
            conn.executemany(
                "INSERT INTO base_files (base_id, role, path, sha256, size, format) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (base_id, str(f.role), os.fspath(f.path), f.sha256, f.size, f.format)
                    for f in base.files
                ],
            )
            (stored,) = self._load(conn, "WHERE id = ?", (base_id,))
        return stored

    def remove(self, name: str) -> BaseImage:
        """Remove the base called ``name`` (its files stay on disk); returns what was removed.
        Raises :class:`BaseNotFound` if there is none."""
        with self._writing() as conn:
            found = self._load(conn, "WHERE name = ?", (name,))
            if not found:
                raise self._not_found(f"no base '{name}'", self._load(conn))
            conn.execute("DELETE FROM base_files WHERE base_id = ?", (found[0].id,))
            conn.execute("DELETE FROM bases WHERE id = ?", (found[0].id,))
        return found[0]

    def get(self, key: str | int) -> BaseImage:
        """The base with name ``key``, else with id ``key`` (digits), else whose sha256 starts
        with ``key`` (at least 4 hex digits; a ``sha256:`` prefix is allowed).

        Raises :class:`BaseNotFound` naming what the catalog has, or :class:`BadInput` when
        a sha256 prefix matches several bases.
        """
        text = str(key).strip()
        with self._reading() as conn:
            bases = [] if conn is None else self._load(conn)
        for b in bases:
            if b.name == text:
                return b
        if text.isdigit():
            for b in bases:
                if b.id == int(text):
                    return b
        prefix = text.lower().removeprefix("sha256:")
        if len(prefix) >= MIN_SHA_PREFIX and _HEX.fullmatch(prefix):
            hits = [b for b in bases if b.sha256.startswith(prefix)]
            if len(hits) == 1:
                return hits[0]
            if hits:
                raise BadInput(
                    f"sha256 prefix '{prefix}' matches several bases in {self.path}: "
                    + ", ".join(f"{b.name} ({b.sha256[:16]}…)" for b in hits),
                    hint="give more digits, or the name",
                )
        raise self._not_found(f"no base '{text}'", bases)

    def by_sha256(self, sha: str) -> BaseImage | None:
        """The base whose identity is ``sha`` (full digest), else the first base having a file
        with that digest (so a registered disk or kernel finds its base); ``None`` if none."""
        sha = sha.lower()
        found = self._select("WHERE sha256 = ?", (sha,)) or self._select(
            "WHERE id IN (SELECT base_id FROM base_files WHERE sha256 = ?)", (sha,)
        )
        return found[0] if found else None

    def find_file(self, sha256: str) -> Path | None:
        """A file of some base with this sha256 that still exists with its registered size
        (the content is not re-hashed here: whoever copies it verifies it)."""
        with self._reading() as conn:
            if conn is None:
                return None
            rows = conn.execute(
                "SELECT path, size FROM base_files WHERE sha256 = ? ORDER BY base_id",
                (sha256.lower(),),
            ).fetchall()
        for row in rows:
            path = Path(row["path"])
            try:
                if path.is_file() and path.stat().st_size == row["size"]:
                    return path
            except OSError:
                continue
        return None

    def find(self, app_arch: str, app_os: str) -> list[BaseImage]:
        """Bases that can run an application for ``app_arch``/``app_os`` (see
        :func:`vmwu.arch.guest_can_run` and :func:`vmwu.arch.os_matches`): bases of exactly
        that architecture first, then compatible ones (i386 app on x86_64), each by id.
        Rows with an architecture or OS name this vmwu does not know are skipped."""
        arch = canonical_arch(app_arch)
        if app_os.strip():
            parse_os(app_os)  # a bad request is an error, not "no match"
        ranked: list[tuple[int, int, BaseImage]] = []
        for b in self.list():
            try:
                if not (guest_can_run(arch, b.architecture) and os_matches(app_os, b.guest_os)):
                    continue
                exact = canonical_arch(b.architecture) == arch
            except BadInput:
                continue
            ranked.append((0 if exact else 1, b.id or 0, b))
        ranked.sort(key=lambda r: (r[0], r[1]))
        return [b for _, _, b in ranked]

    def _not_found(self, what: str, bases: list[BaseImage]) -> BaseNotFound:
        if not bases:
            return BaseNotFound(
                f"{what} in {self.path}: the catalog is empty",
                hint="run `vmwu base build tiny` or `vmwu base add`",
            )
        return BaseNotFound(
            f"{what} in {self.path}; it has: " + ", ".join(b.summary for b in bases)
        )

    # Last in the class: from here on, ``list`` in annotations would name this method.
    def list(self) -> list[BaseImage]:
        """Every base, by id."""
        return self._select()


def format_choices(bases: list[BaseImage]) -> str:
    """The numbered list of thesis figure 6.3: a header, then one line per base."""
    header = ("ID", "NAME", "ARCH", "OS", "FS", "DESCRIPTION")
    rows = [header] + [
        (
            str(b.id),
            b.name,
            b.architecture,
            b.guest_os,
            b.filesystem,
            " ".join(b.description.split()),
        )
        for b in bases
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = []
    for r in rows:
        cells = [r[0].rjust(widths[0])] + [
            c.ljust(w) for c, w in zip(r[1:-1], widths[1:], strict=True)
        ]
        lines.append(("  ".join(cells) + "  " + r[-1]).rstrip())
    return "\n".join(lines) + "\n"


def choose_base(
    catalog: Catalog,
    app_arch: str,
    app_os: str,
    *,
    interactive: bool,
    ask: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
    attempts: int = 3,
) -> BaseImage:
    """Auto-source a base (thesis ``base-image-autosource``): the first of
    :meth:`Catalog.find`, or, when ``interactive``, the one the user picks from the numbered
    list (by ID or name; an empty answer takes the first; ``attempts`` wrong answers or end
    of input are a :class:`BadInput`). ``ask`` reads standard input, a terminal or a pipe.
    No match is a :class:`BaseNotFound` naming the request and what the catalog has."""
    matches = catalog.find(app_arch, app_os)
    if not matches:
        request = f"{app_arch} {app_os}".strip()
        bases = catalog.list()
        if not bases:
            raise BaseNotFound(
                f"no base for a {request} application: the catalog {catalog.path} is empty",
                hint="run `vmwu base build tiny`",
            )
        raise BaseNotFound(
            f"no base in {catalog.path} can run a {request} application; it has: "
            + ", ".join(b.summary for b in bases)
        )
    first = matches[0]
    if not interactive:
        return first
    out.write(format_choices(matches))
    out.flush()
    for _ in range(attempts):
        try:
            answer = ask(f"Enter ID of selected base [{first.id}]: ").strip()
        except (EOFError, RuntimeError):  # RuntimeError: input() without any stdin
            raise BadInput(
                "no base chosen: standard input ended before an answer (end of input)",
                hint="give the ID on standard input, e.g. printf '2\\n' | vmwu pack …, or "
                "set base-image-autosource-interaction = 0 to take the first match",
            ) from None
        if not answer:
            return first
        for b in matches:
            if answer == str(b.id) or answer == b.name:
                return b
        ids = ", ".join(str(b.id) for b in matches)
        out.write(f"'{answer}' is not one of the listed IDs ({ids})\n")
        out.flush()
    raise BadInput(
        f"no base chosen after {attempts} answers that are not one of the listed IDs",
        hint="pass --base-image NAME, or --base-image-autosource-interaction 0",
    )


__all__ = [
    "SCHEMA_VERSION",
    "BaseFile",
    "BaseImage",
    "Catalog",
    "base_identity",
    "choose_base",
    "format_choices",
    "now_utc",
]
