"""``python -m tracerl`` is the ``tracerl`` command."""

import sys

from tracerl.cli import main

sys.exit(main())
