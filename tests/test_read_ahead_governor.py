"""The read-ahead governor: one-token steps timed with reading ahead off and on, the faster mode kept, trials
repeated less often while they agree."""

from moedge.runtime.read_ahead_governor import ReadAheadGovernor


def run(governor: ReadAheadGovernor, off: float, on: float, steps: int) -> list[bool]:
    """The mode of each of `steps` steps, each taking `on` or `off` seconds as the governor chose."""
    modes = []
    for _ in range(steps):
        modes.append(governor.on)
        governor.record(on if governor.on else off)
    return modes


def test_reading_ahead_that_is_slower_runs_only_in_trials():
    governor = ReadAheadGovernor(first_trial_after=0, trial_steps=4, first_keep=10, max_keep=40)
    modes = run(governor, off=1.0, on=1.1, steps=4 + 4 + 10 + 4 + 4 + 20 + 4 + 4 + 40 + 4 + 4 + 40)
    assert modes == [False] * 4 + [True] * 4 + [False] * 10 + [False] * 4 + [True] * 4 + [False] * 20 \
        + [False] * 4 + [True] * 4 + [False] * 40 + [False] * 4 + [True] * 4 + [False] * 40  # keep doubles
    assert governor.decisions == [False] * 4  # while the trials agree, up to max_keep


def test_a_clear_loss_ends_the_trial_at_half():
    """The first half of the trial with reading ahead 25% slower or more (its lower median): off without the
    rest."""
    governor = ReadAheadGovernor(first_trial_after=0, trial_steps=4, first_keep=10, clear_loss=0.25)
    assert run(governor, off=1.0, on=1.3, steps=4 + 2 + 10) == [False] * 4 + [True] * 2 + [False] * 10
    assert governor.decisions == [False]
    governor = ReadAheadGovernor(first_trial_after=0, trial_steps=4, first_keep=10, clear_loss=0.25)
    times = iter([1.0] * 4 + [1.2, 1.3, 1.3, 1.3])  # the first half's lower median within 25%: the trial goes on
    modes = []
    for _ in range(8):
        modes.append(governor.on)
        governor.record(next(times))
    assert modes == [False] * 4 + [True] * 4 and governor.decisions == [False]
    governor = ReadAheadGovernor(first_trial_after=0, trial_steps=8, first_keep=10, clear_loss=0.25)
    times = iter([1.0] * 8 + [1.5, 1.0, 1.5, 1.5])  # one lucky step of four does not keep a clear loss going
    for _ in range(12):
        governor.record(next(times))
    assert governor.decisions == [False] and not governor.on


def test_the_first_trial_waits():
    """A short generation never reads ahead: the first trial comes after `first_trial_after` steps."""
    governor = ReadAheadGovernor(first_trial_after=6, trial_steps=4, first_keep=10)
    assert run(governor, off=1.0, on=0.5, steps=6 + 4 + 4 + 3) == [False] * 6 + [False] * 4 + [True] * 4 + [True] * 3
    assert governor.decisions == [True]


def test_reading_ahead_that_is_faster_is_kept():
    governor = ReadAheadGovernor(first_trial_after=0, trial_steps=4, first_keep=10)
    modes = run(governor, off=1.0, on=0.8, steps=4 + 4 + 10)
    assert modes == [False] * 4 + [True] * 4 + [True] * 10
    assert governor.decisions == [True]


def test_a_gain_within_the_margin_does_not_turn_it_on():
    governor = ReadAheadGovernor(first_trial_after=0, trial_steps=4, first_keep=10, margin=0.05)
    assert run(governor, off=1.0, on=0.97, steps=4 + 4 + 10)[8:] == [False] * 10
    assert governor.decisions == [False]


def test_a_changed_decision_starts_the_keep_over():
    governor = ReadAheadGovernor(first_trial_after=0, trial_steps=4, first_keep=10)
    run(governor, off=1.0, on=0.8, steps=4 + 4 + 10)  # on wins
    modes = run(governor, off=1.0, on=1.1, steps=4 + 4 + 10)  # then the disk slows: off wins, kept 10 steps again
    assert modes == [False] * 4 + [True] * 4 + [False] * 10
    assert governor.decisions == [True, False]


def test_one_slow_step_does_not_decide():
    governor = ReadAheadGovernor(first_trial_after=0, trial_steps=5, first_keep=10)
    times = iter([1.0, 1.0, 9.0, 1.0, 1.0, 0.8, 0.8, 0.8, 0.8, 0.8])  # a hiccup in the off trial
    for _ in range(10):
        governor.record(next(times))
    assert governor.decisions == [True] and governor.on
    governor = ReadAheadGovernor(first_trial_after=0, trial_steps=5, first_keep=10)
    times = iter([1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 9.0, 0.8, 0.8, 0.8])  # one in the on trial
    for _ in range(10):
        governor.record(next(times))
    assert governor.decisions == [True]
