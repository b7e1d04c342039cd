"""Instance parameters as files on the instance ISO.

The thesis's contract is one file, ``param``, with the arguments separated by spaces, so
that `` `cat /cdrom/param` `` in ``app-launch`` passes them on (word splitting and all).
Arguments with spaces, quotes, ``$``, backticks or non-ASCII text cannot survive that, so
two exact forms sit beside it:

``parameters-filename`` renames only the thesis's file; the exact forms keep their names:

- ``param.argv``: one argument per line (UTF-8); an argument containing a newline is only
  exact in ``param.sh``;
- ``param.sh``: ``set -- 'arg1' 'arg2' ...`` quoted for POSIX sh; the generated auto-run
  script sources it, so ``"$@"`` in ``app-launch`` holds the arguments exactly.
"""

from __future__ import annotations

import shlex

from vmwu.errors import BadInput
from vmwu.images.iso import IsoEntry

EXACT = ("param.argv", "param.sh")


def param_entries(args: list[str], filename: str = "param") -> list[IsoEntry]:
    if not filename or "/" in filename or filename.startswith(".") or filename in EXACT:
        raise BadInput(
            f"bad parameters-filename {filename!r}: use a plain file name other than "
            + " and ".join(EXACT)
        )
    for arg in args:
        if "\0" in arg:
            raise BadInput("an instance argument contains a NUL byte, which no guest can receive")
    spaced = " ".join(args) + "\n"
    argv = "".join(a + "\n" for a in args)
    script = "set --" + "".join(" " + shlex.quote(a) for a in args) + "\n"
    return [
        IsoEntry(filename, data=spaced.encode()),
        IsoEntry("param.argv", data=argv.encode()),
        IsoEntry("param.sh", data=script.encode()),
    ]
