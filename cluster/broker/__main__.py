"""`python -m semel.cluster.broker`: run one broker in the foreground."""

import sys

from semel.cluster.broker.process import main

sys.exit(main())
