"""The scenario catalogue. Importing this package registers every scenario module."""

from . import api, faults, mremap, noncooperative, vma_merge  # noqa: F401
from . import collapse as _collapse  # noqa: F401
from . import move as _move  # noqa: F401
from . import races as _races  # noqa: F401
from . import rwp as _rwp  # noqa: F401
from . import wp as _wp  # noqa: F401
from . import wp_cleared as _wp_cleared  # noqa: F401
from . import wp_fork as _wp_fork  # noqa: F401
from .registry import CATALOGUE

__all__ = ["CATALOGUE"]
