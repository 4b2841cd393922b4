"""Progress lines for long work (answering a golden set, embedding chunks, training steps):
``answered 12/24 questions (0.4/s, ETA 30 s)``, printed at most every ``every_s`` seconds plus the
first and the last update, so a log shows the work moving without a line per item.

    progress = Progress("answered", total=len(questions), unit="questions")
    for done in ...:
        progress.update(done)              # or progress.advance(n)
    progress.update(done, note="loss 1.23")  # extra words at the end of the line
    with progress.ticking():               # work with no count to report for a while (one long
        ...                                # batch): the line again every every_s seconds

Every flow step and script that can run longer than about ten seconds reports through this; the
lines go to stdout (a Metaflow step's print shows in the run's output), flushed at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from llmops.errors import ParameterError


class Progress:
    """Counts work done out of ``total`` and prints a throttled line with the rate and the ETA."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "",
        every_s: float = 5.0,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        done: int = 0,
    ):
        """``done``: already finished when this begins (a resumed run): the rate and the ETA count
        only the work done from here."""
        if total < 0:
            raise ParameterError(f"progress total: must be 0 or more, got {total}")
        if every_s < 0:
            raise ParameterError(f"progress every_s: must be 0 or more, got {every_s}")
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.write = write or (lambda line: print(line, flush=True))
        self.clock = clock
        self.began = clock()
        self.done = self.first = min(max(done, 0), total)
        self._last: float | None = None  # when the last line was printed

    def advance(self, n: int = 1, note: str = "") -> None:
        self.update(self.done + n, note)

    def update(self, done: int, note: str = "") -> None:
        """``done`` items of ``total`` finished; prints when the first, the last, or ``every_s``
        seconds after the previous line."""
        self.done = min(max(done, 0), self.total)
        now = self.clock()
        if self._last is not None and self.done < self.total and now - self._last < self.every_s:
            return
        self._last = now
        self.write(self.line(now, note))

    @contextlib.contextmanager
    def ticking(self) -> Iterator[Progress]:
        """While the block runs, print the line again whenever ``every_s`` seconds pass without
        one, so a long batch that moves no count still shows the work is alive (and its time)."""
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(self.every_s):
                now = self.clock()
                if self._last is None or now - self._last >= self.every_s:
                    self._last = now
                    self.write(self.line(now))

        thread = threading.Thread(target=tick, name="progress", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def line(self, now: float, note: str = "") -> str:
        elapsed = now - self.began
        unit = f" {self.unit}" if self.unit else ""
        tail = f"; {note}" if note else ""
        if elapsed < 1e-3:  # no time has passed: no rate to tell
            return f"{self.label} {self.done}/{self.total}{unit}{tail}"
        rate = (self.done - self.first) / elapsed
        if self.done >= self.total:
            timing = f"{elapsed:.0f} s, {rate:.2f}/s"
        else:
            eta = f"ETA {(self.total - self.done) / rate:.0f} s" if rate > 0 else "ETA ?"
            timing = f"{elapsed:.0f} s, {rate:.2f}/s, {eta}"
        return f"{self.label} {self.done}/{self.total}{unit} ({timing}){tail}"

    def callback(self) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` function for APIs that report that way (the total they
        pass replaces this one's)."""

        def report(done: int, total: int) -> None:
            self.total = total
            self.update(done)

        return report
