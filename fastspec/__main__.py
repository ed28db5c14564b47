"""``python -m fastspec`` is the ``fastspec`` command."""

import sys

from fastspec.cli import main

sys.exit(main())
