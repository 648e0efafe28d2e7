"""The local cloud as a subprocess, for the tests (see infra/local/launcher.py)."""

from pathlib import Path

from infra.local.launcher import READY_LINE, REPO_ROOT, LocalCloud, free_port

APPS_DIR = Path(__file__).resolve().parent / "apps"  # small Chalice apps used by the tests

__all__ = ["APPS_DIR", "READY_LINE", "REPO_ROOT", "LocalCloud", "free_port"]
