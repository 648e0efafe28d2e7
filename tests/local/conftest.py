"""Fixtures of the local cloud tests; makes ``tests/local_cloud.py`` importable."""

import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

APPS_DIR = TESTS_DIR / "apps"
