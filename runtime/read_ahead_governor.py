"""Reading ahead only while it pays: decode steps timed with it off and on, the faster kept.

Whether reading ahead helps depends on the disk and the model, not on anything known at load: on this VM's disk
(1-1.4 GB/s of random expert reads) olmoe-shape under 512 MiB decoded at 36 ms/token without it and 59 with it (its
wrong guesses' reads queue before the routed experts' own), olmoe-shape with int4 experts 6% faster with it in one
run and 25-60% slower in others; a fast disk with idle time between a layer's reads is where it hides the most. So
by default (`Model.load(read_ahead="auto")`) the runtime measures: after `FIRST_TRIAL_AFTER` one-token steps
without reading ahead (a short generation could not earn back what a trial costs: 10% of a 64-step run on olmoe-
shape under 512 MiB), a trial of `TRIAL_STEPS` steps without it, then as many with it, and the mode whose median
step was faster — reading ahead only when faster by `MARGIN` — runs for `keep` steps before the next trial. A trial
with reading ahead stops at half its steps when their lower median was slower than the median without it by
`CLEAR_LOSS` (a disk-bound run: the common case here). Each trial that agrees with the one before doubles `keep`
(from `FIRST_KEEP` up to `MAX_KEEP`), so once settled the trials cost ~1-2% of the steps.
"""

from __future__ import annotations

import threading

FIRST_TRIAL_AFTER = 64  # one-token steps without reading ahead before the first trial
TRIAL_STEPS = 8  # one-token steps each way per trial (medians: one slow step does not decide)
FIRST_KEEP = 64  # steps the faster mode runs after a trial that changed the decision
MAX_KEEP = 1024
MARGIN = 0.05  # reading ahead wins only when its median step is this much shorter
CLEAR_LOSS = 0.25  # half a trial with reading ahead whose lower median is this much slower ends it
READ_AHEAD_MODES = {"auto": "auto", "on": True, "off": False}  # the CLI's --read-ahead → Model.load(read_ahead=...)


class ReadAheadGovernor:
    """`on`: whether the next one-token step reads ahead; `record(seconds)` reports how long it took."""

    def __init__(self, trial_steps: int = TRIAL_STEPS, first_keep: int = FIRST_KEEP, max_keep: int = MAX_KEEP,
                 margin: float = MARGIN, clear_loss: float = CLEAR_LOSS, first_trial_after: int = FIRST_TRIAL_AFTER):
        self._trial_steps, self._first_keep, self._max_keep, self._margin = trial_steps, first_keep, max_keep, margin
        self._clear_loss = clear_loss
        self._lock = threading.Lock()
        self._times: dict[bool, list[float]] = {False: [], True: []}  # the current trial's steps, by mode
        self._kept = first_trial_after  # steps left in the mode chosen by the last trial (0: in a trial)
        self._keep = first_keep
        self.on = False  # a trial starts with reading ahead off
        self.decisions: list[bool] = []  # each trial's choice, oldest first (what `moedge bench` reports)

    def record(self, seconds: float) -> None:
        """Count a one-token step made in mode `on`, and choose the next step's mode."""
        with self._lock:
            if self._kept:
                self._kept -= 1
                if not self._kept:
                    self.on = False  # the next trial
                return
            times = self._times[self.on]
            times.append(seconds)
            if not self.on:
                self.on = len(times) == self._trial_steps  # the off half of the trial is over
                return
            half = self._trial_steps // 2
            off = sorted(self._times[False])[half]
            if len(times) == half and sorted(times)[(half - 1) // 2] > off * (1.0 + self._clear_loss):
                self._decide(False)
            elif len(times) == self._trial_steps:
                self._decide(sorted(times)[half] < off * (1.0 - self._margin))

    def _decide(self, choice: bool) -> None:
        """End the trial: `choice` (read ahead or not) for the next `keep` steps."""
        agreed = bool(self.decisions) and self.decisions[-1] == choice
        self._keep = min(2 * self._keep, self._max_keep) if agreed else self._first_keep
        self.decisions.append(choice)
        self._times = {False: [], True: []}
        self.on, self._kept = choice, self._keep
