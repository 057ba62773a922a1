"""Fault handling: FaultHandler with native, thread and process engines, and policies."""

from .context import FaultContext
from .core import UffdClosedError
from .handler import ENGINES, EngineName, FaultHandler
from .policy import (
    Address,
    Builtin,
    Continue,
    Copy,
    Delay,
    FileSource,
    Fill,
    FillIndexed,
    FunctionPolicy,
    GoneOk,
    Move,
    Never,
    Policy,
    Readahead,
    RwpUnprotect,
    Unprotect,
    Zeropage,
)
from .process_engine import HelperTraceback
from .stats import (
    FaultCounts,
    ForkAdopted,
    HandlerStats,
    LatencySummary,
    LoggedEvent,
    ReleaseReason,
)

__all__ = [
    "ENGINES",
    "Address",
    "Builtin",
    "Continue",
    "Copy",
    "Delay",
    "EngineName",
    "FaultContext",
    "FaultCounts",
    "FaultHandler",
    "FileSource",
    "Fill",
    "FillIndexed",
    "ForkAdopted",
    "FunctionPolicy",
    "GoneOk",
    "HandlerStats",
    "HelperTraceback",
    "LatencySummary",
    "LoggedEvent",
    "Move",
    "Never",
    "Policy",
    "Readahead",
    "ReleaseReason",
    "UffdClosedError",
    "RwpUnprotect",
    "Unprotect",
    "Zeropage",
]
