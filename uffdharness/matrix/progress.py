"""Progress of a matrix run on stderr: a live status line on a terminal, milestones elsewhere.

Neither repeats the table printed at the end: verdicts and reasons appear once, there.
On a terminal one line is rewritten in place, once a second and at every milestone, with
every kernel's stage and how long it has been in it:

    matrix 14 s: debian:5.10 booting 9 s | debian:6.1 done | debian:6.12 waiting

Anywhere else (a pipe, a CI log) each kernel gets a line when it starts and when it ends:

    matrix: debian:6.1: booting 6.1.0-57-amd64 (6.1.192-3) in qemu (tcg, 2 vCPU, 2048 MB)
    matrix: debian:6.1: finished in 6.6 s (boot 3.0 s, tcg)

Notes (a download, an apt fallback) are lines of their own on both.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from .runner import Milestone

TICK_S = 1.0
# the live line's word for each stage; "done" milestones say how they ended instead
LIVE_WORDS = {"preparing": "preparing", "booting": "booting", "host": "running"}
ENDINGS = {"finished": "done", "interrupted": "interrupted"}

__all__ = ["ProgressPrinter"]


class ProgressPrinter:
    """A Progress callback for the matrix runner; close() it when the run ends."""

    def __init__(
        self,
        stream: TextIO,
        specs: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
        interactive: bool | None = None,
    ) -> None:
        self.stream = stream
        self.interactive = stream.isatty() if interactive is None else interactive
        self.clock = clock
        self.started = clock()
        # spec -> (its live word, when it got it)
        self.stages = {spec: ("waiting", self.started) for spec in specs}
        self._lock = threading.Lock()
        self._drawn = False
        self._closed = threading.Event()
        self._ticker: threading.Thread | None = None
        if self.interactive:
            self._ticker = threading.Thread(target=self._tick, name="matrix-progress", daemon=True)
            self._ticker.start()

    def __call__(self, milestone: Milestone) -> None:
        with self._lock:
            if milestone.stage == "note":
                self._print(f"matrix: {milestone}")
            elif self.interactive:
                self.stages[milestone.spec] = (_live_word(milestone), self.clock())
                self._draw()
            elif milestone.stage != "preparing":  # resolving a cached kernel takes no time
                self._print(f"matrix: {milestone}")

    def close(self) -> None:
        """Stop the ticker and erase the live line, so the table starts on a clean line."""
        self._closed.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            self._erase()

    def live_line(self) -> str:
        now = self.clock()
        parts = []
        for spec, (word, since) in self.stages.items():
            active = word in LIVE_WORDS.values()
            parts.append(f"{spec} {word} {now - since:.0f} s" if active else f"{spec} {word}")
        return f"matrix {now - self.started:.0f} s: " + " | ".join(parts)

    def _tick(self) -> None:
        while not self._closed.wait(TICK_S):
            with self._lock:
                self._draw()

    def _draw(self) -> None:
        width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
        line = self.live_line()
        if len(line) > width:
            line = line[: width - 3] + "..."
        self.stream.write(f"\r\033[K{line}")
        self.stream.flush()
        self._drawn = True

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False

    def _print(self, line: str) -> None:
        redraw = self._drawn
        self._erase()
        self.stream.write(line + "\n")
        self.stream.flush()
        if redraw:
            self._draw()


def _live_word(milestone: Milestone) -> str:
    if milestone.stage == "done":
        return ENDINGS.get(milestone.text.split(" ", 1)[0], "failed")
    return LIVE_WORDS.get(milestone.stage, milestone.stage)
