"""Progress of long work: a tqdm bar on a terminal, plain periodic log lines when stderr is a file or a pipe.

A redrawn bar written to a log file is one carriage-return update per step (a 1,000-step run left 120 kB of
them); :func:`progress_bar` keeps tqdm's counting, rate, ETA and postfix, and writes one line through
:mod:`logging` every ``interval`` seconds instead, plus one at the end.
"""

from __future__ import annotations

import io
import logging
import math
import sys
import time
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger("iddm.progress")

LOG_INTERVAL_S = 30.0
"""Seconds between two progress lines in a log file."""


class LogLines(tqdm):
    """A tqdm that logs ``desc: 12% 120/1000 [00:45<05:00, 2.6step/s, loss=0.1]`` at most every ``interval`` seconds
    and once when it closes, instead of redrawing a bar."""

    def __init__(self, iterable=None, *args: Any, interval: float = LOG_INTERVAL_S, **kwargs: Any):
        self._interval, self._last_line = interval, -math.inf
        kwargs.update(file=io.StringIO(), mininterval=interval, ncols=0, ascii=True)
        super().__init__(iterable, *args, **kwargs)

    def _log(self) -> None:
        logger.info(self.format_meter(**self.format_dict))
        self._last_line = time.monotonic()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        # tqdm also redraws on every set_postfix(refresh=True); a log file gets a line per interval at most.
        if msg != "" and not self.disable and self.n and time.monotonic() - self._last_line >= self._interval:
            self._log()
        return True

    def close(self) -> None:
        if not self.disable and self.n:  # tqdm disables itself before its final redraw: log the end here
            self._log()
        super().close()


def progress_bar(iterable=None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on a terminal; :class:`LogLines` otherwise (same arguments)."""
    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    return LogLines(iterable, **kwargs)
