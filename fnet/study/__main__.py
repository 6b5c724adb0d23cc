"""``python -m fnet.study <preset>``: see :mod:`fnet.study.runner`."""

import sys

from fnet.study.runner import main

sys.exit(main())
