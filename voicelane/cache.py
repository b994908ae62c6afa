"""Where VoiceLane keeps what it builds or downloads once per machine (`$VOICELANE_CACHE`, else the XDG cache)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("VOICELANE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "voicelane"
    )
    return Path(root)
