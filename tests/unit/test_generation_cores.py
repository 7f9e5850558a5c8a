"""A served engine's cores of its own (handlers/generation/cores.py): which cores go where, and the threads of a
real process bound that way, in a child process (binding this one would slow the rest of the tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from handlers.generation.cores import split
from scripts import REPO_ROOT


@pytest.mark.parametrize(
    ("allowed", "threads", "expected"),
    [
        ({0, 1}, 1, ({1}, {0})),
        (set(range(8)), 7, ({1, 2, 3, 4, 5, 6, 7}, {0})),
        (set(range(8)), 3, ({5, 6, 7}, {0, 1, 2, 3, 4})),
        ({3, 5}, 1, ({5}, {3})),  # a container's cpuset: the cores it may use, not 0..n-1
        ({0, 1}, 2, None),  # no core left for the server's threads: nothing is bound
        ({0}, 1, None),
        ({0, 1}, 0, None),
    ],
)
def test_the_engine_takes_the_last_cores_and_leaves_the_rest(allowed, threads, expected):
    assert split(allowed, threads) == expected


CHILD = """
import json, os, sys, threading, time
import torch
from handlers.generation.loop import EngineLoop

class Idle:  # an engine with nothing to do: the loop only waits, then stops
    has_work, waiting, running = False, 0, 0
    def filling(self, queued): return False
    def abort_all(self, error): return []

torch.set_num_threads(1)
earlier = threading.Thread(target=threading.Event().wait, daemon=True)  # a server thread started before the engine
earlier.start()
loop = EngineLoop(Idle(), deliver_apart=True, bind_cores=sys.argv[1] == "1")
later = threading.Thread(target=threading.Event().wait, daemon=True)  # started after it, from the same thread
later.start()
deadline = time.monotonic() + 30  # the engine thread binds itself as it starts
while loop._engine_cores and os.sched_getaffinity(loop._thread.native_id) != loop._engine_cores:
    assert time.monotonic() < deadline, "the engine thread never bound itself"
    time.sleep(0.01)
cores = {name: sorted(os.sched_getaffinity(t.native_id)) for name, t in
         [("main", threading.main_thread()), ("earlier", earlier), ("later", later), ("engine", loop._thread),
          ("delivery", loop._delivery)]}
loop.stop()
print(json.dumps(cores))
"""


def bound_cores(bind: bool) -> dict[str, list[int]]:
    child = subprocess.run([sys.executable, "-c", CHILD, "1" if bind else "0"], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=120, env=os.environ | {"PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout.splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="one core")
def test_a_bound_engine_thread_has_its_core_and_every_other_thread_the_rest():
    allowed = sorted(os.sched_getaffinity(0))
    engine, others = allowed[-1:], allowed[:-1]
    assert bound_cores(True) == {"main": others, "earlier": others, "later": others, "engine": engine,
                                 "delivery": others}  # fmt: skip
    assert bound_cores(False) == dict.fromkeys(("main", "earlier", "later", "engine", "delivery"), allowed)
