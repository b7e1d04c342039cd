import sys

from vmwu.cli import main

sys.exit(main())
