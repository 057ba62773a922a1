"""The scenario catalogue. Importing this package registers every scenario module."""

from . import api, events_live, faults, minor_wp, mremap, noncooperative, vma_merge  # noqa: F401
from . import collapse as _collapse  # noqa: F401
from . import move as _move  # noqa: F401
from . import races as _races  # noqa: F401
from . import registration as _registration  # noqa: F401
from . import rwp as _rwp  # noqa: F401
from . import rwp_state as _rwp_state  # noqa: F401
from . import sigbus as _sigbus  # noqa: F401
from . import stress as _stress  # noqa: F401
from . import vmm as _vmm  # noqa: F401
from . import wp as _wp  # noqa: F401
from . import wp_cleared as _wp_cleared  # noqa: F401
from . import wp_fork as _wp_fork  # noqa: F401
from . import wp_swap as _wp_swap  # noqa: F401
from .registry import CATALOGUE

__all__ = ["CATALOGUE"]
