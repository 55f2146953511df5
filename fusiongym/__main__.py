"""``python -m fusiongym``: the command line."""

import sys

from fusiongym.scripts.cli import main

sys.exit(main())
