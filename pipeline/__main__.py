"""``python -m pipeline`` and the ``alignment-pipeline`` script: the command line lives in ``pipeline.cli``."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
