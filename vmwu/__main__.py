import sys

if sys.argv[1:2] == ["--vmwu-process-guard"]:
    # vmwu's process guard (vmwu/guard.py), as a frozen vmwu starts it: before anything
    # else is imported
    from vmwu.guard import dispatch

    dispatch()

from vmwu.cli import main  # noqa: E402

sys.exit(main())
