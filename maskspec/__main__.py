"""``python -m maskspec``: the maskspec command line."""

import sys

from maskspec.cli import main

sys.exit(main())
