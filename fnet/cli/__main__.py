"""``python -m fnet.cli COMMAND [ARGS...]``: :func:`fnet.cli.main`."""

import sys

from fnet.cli import main

sys.exit(main())
