"""Progress a campaign reports while it works: the offline stage epoch by epoch, each cycle phase
by phase, and what the platform is starting.

The coordinator and the platform report to a :class:`Progress`; :class:`BarProgress` draws tqdm
bars on stderr (``eclm run``, and the Python API unless ``Platform(..., progress=False)``),
:class:`NullProgress` stays silent (benchmarks, tests).
"""

from __future__ import annotations

import sys
from typing import Protocol, TextIO


class Progress(Protocol):
    """Receives progress; every method must be cheap and must never raise."""

    def message(self, text: str) -> None:
        """A one-line note (e.g. what is being started)."""

    def begin(self, task: str, total: int) -> None:
        """A task of ``total`` steps starts."""

    def advance(self, task: str, note: str = "") -> None:
        """One step of ``task`` is done; ``note`` says what (e.g. the phase or a metric)."""

    def end(self, task: str) -> None:
        """``task`` is over."""


class NullProgress:
    """Reports nothing."""

    def message(self, text: str) -> None:
        pass

    def begin(self, task: str, total: int) -> None:
        pass

    def advance(self, task: str, note: str = "") -> None:
        pass

    def end(self, task: str) -> None:
        pass


class BarProgress:
    """tqdm bars (one per running task) and notes, written to ``stream`` (default: stderr).

    Args:
        stream: Where to draw.
        leave: Keep finished bars on screen.
    """

    def __init__(self, stream: TextIO | None = None, leave: bool = False) -> None:
        self.stream, self.leave = stream or sys.stderr, leave
        self._bars: dict[str, object] = {}

    def message(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"eclm: {text}", file=self.stream)

    def begin(self, task: str, total: int) -> None:
        from tqdm.auto import tqdm

        self.end(task)
        self._bars[task] = tqdm(total=total, desc=task, file=self.stream, leave=self.leave, dynamic_ncols=True,
                                bar_format="{desc}: {n_fmt}/{total_fmt} |{bar:20}| {elapsed} {postfix}")

    def advance(self, task: str, note: str = "") -> None:
        bar = self._bars.get(task)
        if bar is not None:
            bar.set_postfix_str(note, refresh=False)
            bar.update(1)

    def end(self, task: str) -> None:
        bar = self._bars.pop(task, None)
        if bar is not None:
            bar.close()


__all__ = ["BarProgress", "NullProgress", "Progress"]
