"""``python -m fnet.study <preset>``: see :mod:`fnet.study.cli`."""

import sys

from fnet.study.cli import main

sys.exit(main())
