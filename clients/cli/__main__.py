"""`python -m clients.cli`: the `cameo` command without its installed script."""

import sys

from clients.cli import main

sys.exit(main())
