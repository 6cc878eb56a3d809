"""medvit: decide which backbone to trust on your own mammograms."""
import os as _os

# albumentations checks PyPI for updates at import time; medvit never reaches out.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
