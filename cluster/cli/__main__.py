"""`python -m semel.cli`: the same as the `semel` command."""

import sys

from semel.cli.main import main

sys.exit(main())
