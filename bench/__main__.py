"""``python -m bench``: see bench/README.md, or ``python -m bench --help``."""

import sys

from .runner import main

sys.exit(main())
