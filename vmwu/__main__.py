import sys

from vmwu.entry import main

sys.exit(main())
