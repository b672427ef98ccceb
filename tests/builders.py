"""Builders every test shares: the repository root, run ids, commands, statuses, metrics readers."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
