"""The ``vmwu`` command's entry point (``[project.scripts]``, ``python -m vmwu``).

Two things happen before the command line (:mod:`vmwu.cli`) is imported: a frozen vmwu
started as its own process guard becomes it (vmwu/guard.py), and a ``vmwu run`` with a
node pool service (``$VMWU_POOL``) is handed to it by :mod:`vmwu.run.poolclient`, which
imports a few standard modules only: a tiny job's ``vmwu run`` is mostly Python starting
up (0.12 s through vmwu.cli, 0.05 s this way, measured on the reference node).
"""

from __future__ import annotations

import sys


def main() -> int:
    if sys.argv[1:2] == ["--vmwu-process-guard"]:
        from vmwu.guard import dispatch

        dispatch()
    if sys.argv[1:2] == ["run"] and sys.argv[2:3] not in (["-h"], ["--help"]):
        if "--debug" not in sys.argv:  # --debug: the full command line, which logs it all
            from vmwu.run.poolclient import main_run

            code = main_run(sys.argv[2:])
            if code is not None:
                return code
    from vmwu.cli import main as cli_main

    return cli_main()
