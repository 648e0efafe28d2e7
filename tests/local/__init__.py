"""Tests of the local cloud (``python -m infra.local``)."""
