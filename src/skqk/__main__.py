"""`python -m skqk` runs the `skqk` command, like `python -m skqk.cli`."""

import sys

from skqk.cli import main

sys.exit(main())
