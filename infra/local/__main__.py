"""Entry point of ``python -m infra.local``."""

import sys

from infra.local.cli import main

if __name__ == "__main__":
    sys.exit(main())
