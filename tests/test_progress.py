"""Progress in a log file: plain periodic lines, never a redrawn bar."""

from __future__ import annotations

import logging

from iddm.progress import LogLines, progress_bar


def test_progress_off_a_terminal_logs_plain_lines_not_carriage_returns(capsys, caplog):
    caplog.set_level(logging.INFO, logger="iddm.progress")
    bar = progress_bar(range(40), desc="personalize", unit="step", interval=0.0)
    assert isinstance(bar, LogLines)  # pytest's captured stderr is not a terminal
    for step in bar:
        bar.set_postfix({"loss": f"{1 / (step + 1):.3f}"}, refresh=False)
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out
    lines = [r.getMessage() for r in caplog.records if r.name == "iddm.progress"]
    assert lines and lines[-1].startswith("personalize: 100% 40/40") and "loss=0.025" in lines[-1]
    assert not any("█" in line or "|" in line for line in lines)


def test_progress_lines_are_rate_limited_and_a_transient_bar_still_reports_its_end(caplog):
    caplog.set_level(logging.INFO, logger="iddm.progress")
    with progress_bar(total=1000, desc="cells", unit="cell", leave=False, interval=3600) as bar:
        for done in range(1000):
            bar.update(1)
            bar.set_postfix_str(f"done {done + 1}")  # redraws at once, as the Ray scheduler's bar does
    lines = [r.getMessage() for r in caplog.records if r.name == "iddm.progress"]
    assert len(lines) == 2 and lines[0].startswith("cells:   0% 1/1000"), lines  # the first step, then the end
    assert lines[1].startswith("cells: 100% 1000/1000"), lines
