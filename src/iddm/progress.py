"""Progress of long work: a tqdm bar on a terminal, plain periodic log lines when stderr is a file or a pipe.

A redrawn bar written to a log file is one carriage-return update per step (a 1,000-step run left 120 kB of
them); :func:`progress_bar` keeps tqdm's counting, rate, ETA and postfix, and writes one line through
:mod:`logging` every ``interval`` seconds instead, plus one at the end.
"""

from __future__ import annotations

import io
import logging
import sys
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger("iddm.progress")

LOG_INTERVAL_S = 30.0
"""Seconds between two progress lines in a log file."""


class LogLines(tqdm):
    """A tqdm that logs ``desc: 12% 120/1000 [00:45<05:00, 2.6step/s, loss=0.1]`` at most every ``interval`` seconds
    and once when it closes, instead of redrawing a bar."""

    def __init__(self, iterable=None, *args: Any, interval: float = LOG_INTERVAL_S, **kwargs: Any):
        kwargs.update(file=io.StringIO(), mininterval=interval, maxinterval=max(interval, 10.0), ncols=0, ascii=True)
        kwargs.setdefault("leave", True)
        self._closing = False
        super().__init__(iterable, *args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "" or self.disable:  # tqdm clears a finished bar with an empty message
            return True
        if self.n == 0 and self.last_print_n == 0 and not self._closing:
            return True  # nothing done yet
        logger.info(msg or self.format_meter(**self.format_dict))
        return True

    def close(self) -> None:
        self._closing = True
        if not self.disable and not self.leave and self.n:
            logger.info(self.format_meter(**self.format_dict))  # tqdm would only erase a bar that does not stay
        super().close()


def progress_bar(iterable=None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on a terminal; :class:`LogLines` otherwise (same arguments)."""
    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    return LogLines(iterable, **kwargs)
