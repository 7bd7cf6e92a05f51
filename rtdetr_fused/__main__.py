"""``python -m rtdetr_fused``: the ``rtdetr-fused`` command line."""

import sys

from .cli import main

sys.exit(main())
