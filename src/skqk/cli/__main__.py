"""`python -m skqk.cli` (and `torchrun -m skqk.cli`) run the `skqk` command."""

import sys

from skqk.cli import main

sys.exit(main())
