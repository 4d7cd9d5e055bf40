"""What keeps a long training run safe on the host: Ctrl-C stops after a step and saves it (`StopRequest`),
every event is appended to metrics.jsonl as it happens (`MetricsLog`), and a non-finite loss or gradient
norm stops the run before its state is logged as good, evaluated or saved (`DivergenceGuard`,
`DivergedError`)."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import jax

METRICS_FILE = "metrics.jsonl"


class DivergedError(RuntimeError):
    """A non-finite loss or gradient norm stopped the run (train.py exits 3): nothing was saved or exported
    after it, so the newest checkpoint holds the last good state."""


class StopRequest:
    """Ctrl-C (SIGINT) asks the loop to stop after the current step and save it; a second Ctrl-C aborts.

    A flag rather than an exception in the middle of a step: the state may be donated to a running step or
    half written by an asynchronous save at the moment the signal lands.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort without saving)", file=sys.stderr)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class MetricsLog:
    """Appends one JSON object per event to workdir/metrics.jsonl (flushed, so a killed run loses nothing)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, event: str, step: int, **values) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"event": event, "step": step, **values}) + "\n")


class DivergenceGuard:
    """Reads the steps' non-finite flags at log, eval and save points rather than after every step (a read
    waits for the device, which would stall the pipeline): a diverged run stops before its state is logged
    as good, evaluated or saved. With skipping on, the flagged steps (whose updates the compiled step dropped)
    are only counted."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.pending: list[tuple[int, jax.Array]] = []  # (step, its non-finite flag, still on the device)
        self.skipped = 0  # flagged steps read since the last `take_skipped`

    def add(self, step: int, flag) -> None:
        self.pending.append((step, flag))

    def check(self, last_checkpoint: int | None) -> None:
        """Raises DivergedError at the first flagged step (unless skipping)."""
        flags = jax.device_get([flag for _, flag in self.pending])
        bad = [step for (step, _), flag in zip(self.pending, flags) if flag]
        self.pending = []
        if bad and not self.skip:
            kept = ("no checkpoint was saved" if last_checkpoint is None
                    else f"checkpoint {last_checkpoint} holds the last good state")
            raise DivergedError(f"step {bad[0]}: the loss or gradient norm is not finite; stopped without saving "
                                f"or exporting ({kept}); lower train.learning_rate, or set "
                                f"train.skip_nonfinite_steps=True to skip such steps")
        self.skipped += len(bad)

    def take_skipped(self) -> int:
        count, self.skipped = self.skipped, 0
        return count
