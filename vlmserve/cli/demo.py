"""The built-in demo model: a tiny random-weight LLaVA built once and cached.

It lets ``vlmserve serve`` answer real requests, images included, on a machine with no GPU and no
model download. Its answers are random text.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from vlmserve.models.families import get_family

logger = logging.getLogger(__name__)

DEMO_FAMILY = "llava"
DEMO_NAME = "vlmserve-demo-llava"
#: Bump when the tiny builder changes, so a stale cached demo is rebuilt.
DEMO_VERSION = 2


def demo_checkpoint(cache_dir: Path) -> Path:
    """The demo checkpoint's folder, building it first if it is not cached yet."""
    target = cache_dir / "demo" / f"{DEMO_NAME}-v{DEMO_VERSION}"
    if (target / "config.json").exists():
        return target
    logger.info("building the demo checkpoint in %s (once)", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        get_family(DEMO_FAMILY).build_tiny(Path(tmp) / "model")
        try:
            (Path(tmp) / "model").rename(target)
        except OSError:  # another process built it first
            if not (target / "config.json").exists():
                raise
    return target
