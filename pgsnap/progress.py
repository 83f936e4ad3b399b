"""Progress for long work: a bar with ETA on a terminal, nothing at all in pipes and logs."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import click


class Progress:
    """Tracks `done` of `total`; draws a click progress bar only when the stream is a TTY.

    The total may be unknown when work starts (e.g. a backfill learns it from its first batch):
    pass it to `update` then; the bar appears on the first update that knows it.
    """

    def __init__(self, total: int | None, label: str, stream: IO[str]):
        self.total, self.label, self.stream = total, label, stream
        self.done = 0
        self._bar = None
        self._tty = stream.isatty()

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        if self._tty and self.total:
            if self._bar is None:
                self._bar = click.progressbar(length=max(self.total, done), label=self.label,
                                              file=self.stream, show_eta=True, show_pos=True)
                self._bar.__enter__()
            self._bar.length = max(self.total, done)
            self._bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


@contextmanager
def progress(total: int | None = None, label: str = "", stream: IO[str] | None = None) -> Iterator[Progress]:
    """`with progress(label="populating") as p: ... p.update(done, total)`."""
    p = Progress(total, label, stream or sys.stderr)
    try:
        yield p
    finally:
        p.close()
