"""Cores of its own for a served engine: its intra-op threads on the last cores this process may use, every other
thread of the process (the server's request threads, the delivery of answers, metrics) on the first ones.

Why (``serving.bind_cores``, reports/ab/generate-bind-cores.md): on 2 cores a served engine steps on one core while
the server's front end, the delivery of its chunks and the clients take the other, and the scheduler kept moving
those threads onto the engine's core: the engine thread waited for a core 9-18% of the time. Bound (and the
benchmark's client kept off its core), Triton served 1.10x the tokens/s at the median (7 of 8 interleaved rounds);
TorchServe, whose Java front end still lands on the engine's core, 1.01x. As vLLM's CPU backend binds its OpenMP
threads and leaves a core to its front end. Only this process's threads are bound, never other processes: the
server's front end and other models may still use any core.

The same process's threads also share one interpreter lock: ``share_interpreter`` below.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading

log = logging.getLogger(__name__)
SWITCH_INTERVAL_S = 1e-4  # a served engine's process: how long a thread waits for the interpreter lock (Python: 5 ms)


def split(allowed: set[int], threads: int) -> tuple[set[int], set[int]] | None:
    """(the engine's cores, the others') for ``threads`` intra-op threads among ``allowed`` cores: the engine takes
    the last ones; None when no core would be left for the rest."""
    cores = sorted(allowed)
    if threads < 1 or threads >= len(cores):
        return None
    return set(cores[-threads:]), set(cores[:-threads])


def plan(threads: int) -> tuple[set[int], set[int]] | None:
    """``split`` of the cores this process may use now; None where threads cannot be bound (not Linux)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    return split(os.sched_getaffinity(0), threads)


def move_process_threads(cores: set[int]) -> None:
    """Every thread this process has now onto ``cores`` (threads started later inherit their starter's cores)."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cores)


def reserve(threads: int) -> set[int] | None:
    """Move this process's threads off the engine's cores; the cores the engine thread is to bind itself to
    (``bind_current_thread``), or None where there is nothing to bind."""
    split_cores = plan(threads)
    if split_cores is None:
        return None
    engine, others = split_cores
    move_process_threads(others)
    log.info("language model: engine threads on cores %s, the process's other threads on %s", engine, others)
    return engine


def bind_current_thread(cores: set[int]) -> None:
    """The calling thread, and the intra-op threads it starts afterwards, on ``cores``."""
    os.sched_setaffinity(threading.get_native_id(), cores)


def share_interpreter() -> None:
    """In a language model's server process (never a shared one: the setting is the whole interpreter's), a thread
    that wants the interpreter lock gets it after ``SWITCH_INTERVAL_S`` instead of Python's 5 ms.

    The engine thread lets the lock go inside each operator and takes it back after; the thread that hands out the
    chunks (TorchServe's ``handle``, Triton's delivery) runs stretches of pure Python meanwhile, and the engine could
    wait for a whole stretch (up to 5 ms). Measured at 16 streams (reports/ab/generate-switch-interval.md, 10
    interleaved rounds per server): tokens/s +3% at the median on both servers, ahead in 8 of 10 rounds on
    TorchServe and 7 of 10 on Triton. Single streams: no difference on TorchServe; on Triton behind in 5 of 7
    rounds (median 0.96x), within the noise of so few requests."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
