"""One generation at a time: a worker thread runs jobs from a bounded queue.

Generation is not thread-safe (one numba thread pool, one set of scratch buffers per model), so one
thread runs every job, in arrival order. A job streams its events (`Delta`, then `Finished` or
`Failed`) to the event loop that submitted it. Cancelling a job (its client went away) drops it from
the queue, or stops its generation before the next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from moedge.runtime import InputError, Model
from moedge.runtime.stop_strings import StopStrings
from moedge.runtime.threads import use_threads

from .errors import ApiError, bad_request, internal, overloaded
from .schema import Generation

log = logging.getLogger("moedge.server")


@dataclass(frozen=True)
class Delta:
    """Text to append to the completion (complete UTF-8 characters, never part of a stop string)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The end of a completion: why it ended ("stop" or "length") and the exact token counts."""

    reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    error: ApiError


class Job:
    """One request's generation; `events` receives its `Delta`s and then one `Finished` or `Failed`."""

    def __init__(self, rid: str, generation: Generation):
        self.rid = rid
        self.generation = generation
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.cancel_reason = ""
        self._loop = asyncio.get_running_loop()

    def emit(self, event: Delta | Finished | Failed) -> None:
        """Hand an event to the submitting event loop (called from the worker thread)."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop has closed: the server is shutting down
            self.cancelled.set()


class Worker:
    """Runs `Job`s one at a time on its own thread; at most `queue_size` jobs wait beside the running one."""

    def __init__(self, model: Model, queue_size: int):
        self.model = model
        self.queue_size = queue_size
        self._waiting: deque[Job] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._running: Job | None = None
        self._thread = threading.Thread(target=self._serve, name="moedge-generate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Cancel every job and stop the thread (after the token in progress)."""
        with self._wake:
            self._closed = True
            for job in [*self._waiting, self._running]:
                if job is not None:
                    job.cancelled.set()
            self._waiting.clear()
            self._wake.notify()
        self._thread.join(timeout=10)

    def submit(self, job: Job) -> None:
        """Queue `job`; a 503 `ApiError` when `queue_size` jobs already wait (or, with 0, when one runs)."""
        with self._wake:
            idle = self._running is None
            if len(self._waiting) >= self.queue_size + idle or self._closed:
                raise overloaded(self.queue_size)
            self._waiting.append(job)
            self._wake.notify()

    def cancel(self, job: Job, reason: str = "the client went away") -> None:
        """Stop `job` (for `reason`, which the log says): out of the queue if it waits, before its next token if
        it runs."""
        with self._wake:
            if job.cancelled.is_set():
                return
            if job in self._waiting:
                self._waiting.remove(job)
                log.info("%s: %s while waiting; dropped from the queue", job.rid, reason)
            job.cancel_reason = reason
            job.cancelled.set()

    def _next(self) -> Job | None:
        with self._wake:
            while not self._waiting and not self._closed:
                self._wake.wait()
            if self._closed:
                return None
            self._running = self._waiting.popleft()
            return self._running

    def _serve(self) -> None:
        use_threads(self.model.threads)  # numba's thread count is per thread
        while (job := self._next()) is not None:
            end = self._finish(job)
            with self._wake:
                self._running = None  # before the client hears the end, so it may send its next request
            if end is not None:
                job.emit(end)

    def _finish(self, job: Job) -> Finished | Failed | None:
        """Run `job`: its end, or None if it was cancelled."""
        try:
            return self._run(job)
        except InputError as exc:
            return Failed(bad_request(str(exc)))
        except Exception as exc:  # keep serving; the client gets a 500 and the log the traceback
            log.exception("%s: generation failed", job.rid)
            return Failed(internal(f"generation failed: {type(exc).__name__}: {exc}"))

    def _run(self, job: Job) -> Finished | None:
        g = job.generation
        if job.cancelled.is_set():
            return None
        start, count, stops = time.perf_counter(), 0, StopStrings(g.stop)
        tokens = self.model.generate(g.prompt, max_new_tokens=g.max_tokens, temperature=g.temperature,
                                     top_k=g.top_k, top_p=g.top_p, seed=g.seed)
        for token in tokens:
            count += 1
            text = stops.feed(token.text)
            if text:
                job.emit(Delta(text))
            if stops.matched is not None:
                break
            if job.cancelled.is_set():
                log.info("%s: %s; stopped after %d of %d tokens", job.rid, job.cancel_reason, count, g.max_tokens)
                return None
        if stops.matched is None and (rest := stops.flush()):
            job.emit(Delta(rest))
        reason = "length" if count == g.max_tokens and stops.matched is None else "stop"
        seconds = time.perf_counter() - start
        log.info("%s: %d prompt + %d completion tokens, finish %s, %.2f s", job.rid, len(g.prompt), count, reason,
                 seconds)
        return Finished(reason, len(g.prompt), count)
