"""pgsnap: matching-tags snapshots kept by PostgreSQL itself (thin Python driver + CLI)."""

import os
from pathlib import Path

__version__ = "0.1.0"


def home() -> Path:
    """Project root holding `migrations/` and `sql/` (override with env PGSNAP_HOME)."""
    override = os.environ.get("PGSNAP_HOME")
    return Path(override).resolve() if override else Path(__file__).resolve().parent.parent
