"""LAVA test-case signals, so the harness can run as the command of a LAVA (or tuxrun) job.

A LAVA test shell turns each ``<LAVA_SIGNAL_TESTCASE TEST_CASE_ID=... RESULT=...>`` line on
the console into one test case of the job. ``uffdharness run --lava`` prints one per
scenario x memory as it finishes; ``uffdharness matrix --lava`` one per kernel x pair (the
kernel first in the id) and per kernel's expectation check, once the kernels have run.

LAVA has four results (pass, fail, skip, unknown) and no expected failure:

- known-bug is ``pass``, as in the KTAP output and the exit status (an old kernel showing
  a bug it is documented to have is no regression; making it ``fail`` would make every
  pre-fix kernel's job red for ever). The line before the signal says so
  (``uffdharness: unregister-merge.anon known-bug: ...``), so the reason is in the job log.
- fail, error and hang are ``fail``, as the exit status counts them; the line before says
  which, hang as ``TIMEOUT``. ``unknown`` is not used: a harness error must not pass a
  job that gates on failures.
- skip is ``skip``, with the reason on the line before.

A result with a measurement among its facts (the stress scenario's ``pages_per_s``) carries
it as ``MEASUREMENT=`` and ``UNITS=``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from .ciformat import kernel_labels, kernel_row, measurements, safe

if TYPE_CHECKING:
    from .matrix.runner import KernelRun
    from .runner import Result

__all__ = ["RESULT", "SignalPrinter", "case_id", "print_matrix", "signal_lines"]

RESULT = {
    "pass": "pass",
    "known-bug": "pass",
    "skip": "skip",
    "fail": "fail",
    "error": "fail",
    "hang": "fail",
}
NOTE_WIDTH = 300


def case_id(result: Result, kernel: str | None = None) -> str:
    """``<scenario>.<memory>``, after ``<kernel>.`` in a matrix."""
    # LAVA test case ids are letters, digits, '-', '_' and '.' only.
    name = kernel_row(result) or f"{safe(result.id)}.{safe(result.memory)}"
    return f"{kernel}.{name}" if kernel else name


def _one_line(text: str) -> str:
    text = " ".join(text.split()).replace("<LAVA_", "<LAVA-")  # never a signal by accident
    return text if len(text) <= NOTE_WIDTH else text[: NOTE_WIDTH - 3] + "..."


def signal_lines(result: Result, kernel: str | None = None) -> list[str]:
    """The note (for anything but a pass) and the signal of one result."""
    case = case_id(result, kernel)
    lines = []
    if result.verdict != "pass":
        said = "TIMEOUT" if result.verdict == "hang" else result.verdict
        why = result.reason or result.key
        lines.append(f"uffdharness: {case} {said}" + (f": {_one_line(why)}" if why else ""))
    signal = f"<LAVA_SIGNAL_TESTCASE TEST_CASE_ID={case} RESULT={RESULT[result.verdict]}"
    for measured in measurements(result)[:1]:  # LAVA takes one per case
        signal += f" MEASUREMENT={measured.value:g} UNITS={measured.unit}"
    lines.append(signal + ">")
    return lines


class SignalPrinter:
    """A ``runner.run`` progress callback: the signal of each result as it arrives on
    ``out``, flushed at once (the job's console is the channel), then ``then``'s turn."""

    def __init__(
        self,
        out: TextIO,
        then: Callable[[int, int, Result | None, str], None] | None = None,
    ):
        self.out = out
        self.then = then

    def __call__(self, done: int, total: int, result: Result | None, name: str) -> None:
        if result is not None:
            self.out.write("".join(f"{line}\n" for line in signal_lines(result)))
            self.out.flush()
        if self.then is not None:
            self.then(done, total, result, name)


def print_matrix(runs: Sequence[KernelRun], out: TextIO) -> None:
    """One signal per kernel x pair, and per kernel's expectation check."""
    from .matrix.report import expectations_row

    for run, kernel in zip(runs, kernel_labels([run.spec for run in runs]), strict=True):
        results = list(run.results)
        if run.version is not None:
            results.append(expectations_row(run))
        for result in results:
            out.write("".join(f"{line}\n" for line in signal_lines(result, kernel)))
    out.flush()
