"""The progress helper (llmops.progress): throttled lines with the count, the rate and the ETA."""

import pytest


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_prints_the_first_the_last_and_a_line_every_few_seconds():
    from llmops.progress import Progress

    clock, lines = Clock(), []
    progress = Progress("answered", 100, "questions", every_s=5, write=lines.append, clock=clock)
    for done in range(1, 101):
        clock.now += 0.5  # 2 items a second: 50 s in all
        progress.update(done, note="loss 1.5" if done == 50 else "")
    assert lines[0] == "answered 1/100 questions (0 s, 2.00/s, ETA 50 s)"
    assert lines[-1] == "answered 100/100 questions (50 s, 2.00/s)"
    assert len(lines) == 11  # the first, one each 5 s (the last at 50 s): not one per item
    assert "answered 51/100 questions (26 s, 2.00/s, ETA 24 s)" in lines


def test_progress_callback_advance_and_bad_totals():
    from llmops.errors import ParameterError
    from llmops.progress import Progress

    clock, lines = Clock(), []
    progress = Progress("embedded", 10, write=lines.append, clock=clock)
    progress.advance(4)
    clock.now += 1
    progress.callback()(8, 8)  # a reporter that names its own total
    assert lines == ["embedded 4/10", "embedded 8/8 (1 s, 8.00/s)"]
    with pytest.raises(ParameterError, match="progress total: must be 0 or more, got -1"):
        Progress("x", -1)


def test_ticking_repeats_the_line_while_a_long_batch_moves_no_count():
    import time

    from llmops.progress import Progress

    lines = []
    progress = Progress("answered", 6, "questions", every_s=0.05, write=lines.append)
    with progress.ticking():
        time.sleep(0.3)  # one long batch: no update
    progress.update(6)
    assert len(lines) >= 3 and all(line.startswith("answered 0/6 questions (") for line in lines[:-1])
    assert "ETA ?" in lines[0] and lines[-1].startswith("answered 6/6 questions (")


def test_a_resumed_count_takes_its_rate_from_the_work_done_since():
    from llmops.progress import Progress

    clock, lines = Clock(), []
    progress = Progress("trained step", 100, every_s=0, write=lines.append, clock=clock, done=60)
    clock.now += 10
    progress.update(70)  # 10 steps in 10 s, not 70
    assert lines == ["trained step 70/100 (10 s, 1.00/s, ETA 30 s)"]
