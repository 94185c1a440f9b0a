"""Helpers of the multi-process tests (imported by the test modules, like eval_fixtures)."""

from __future__ import annotations

import faulthandler
import gc
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

#: How long a gloo collective (and the rendezvous) waits for the other ranks before it raises.
GLOO_TIMEOUT_S = 60
#: How long a rank may run once the group is formed: past it the rank prints the stacks of its threads
#: and exits.
RANK_TIMEOUT_S = 180


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now, for a rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_method() -> str:
    """``fork`` while this process runs no other thread, else ``spawn``.

    A forked child inherits the imported stack (a spawned one re-imports torch and
    sentence-transformers, 10 to 20 s each on two shared cores), but only the forking thread: a lock
    that another thread holds at that moment (a server, a loader pool left by an earlier test) stays
    locked in the child forever, and the test hangs instead of failing.
    """
    import threading

    return "fork" if threading.active_count() == 1 else "spawn"


def run_gloo(
    work: Callable[..., None],
    args: tuple = (),
    *,
    world: int = 2,
    method: str | None = None,
    gloo_timeout_s: float = GLOO_TIMEOUT_S,
    rank_timeout_s: float = RANK_TIMEOUT_S,
) -> None:
    """Run ``work(rank, world, *args)`` in ``world`` processes joined in one gloo process group.

    Each rank sets one intra-op thread, joins the group through a rendezvous file in a fresh
    temporary folder (no port to race for), runs ``work`` and destroys the group. The rendezvous and
    any collective that waits for a missing rank raise after ``gloo_timeout_s``; a rank still running
    ``rank_timeout_s`` after the group formed (a hang outside any collective, a destructor stuck on a
    lock) prints the stacks of its threads and exits. A rank that fails fails the caller with its traceback, and whatever way
    this function is left (a failing rank, the deadline, pytest-timeout), no rank outlives it.

    ``work`` and ``args`` must pickle when ``method`` is ``spawn``; ``method`` defaults to
    :func:`start_method`'s choice.
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="gloo-") as folder:
        init_file = str(Path(folder) / "rendezvous")
        context = mp.start_processes(
            _rank_main,
            args=(world, init_file, gloo_timeout_s, rank_timeout_s, work, args),
            nprocs=world,
            join=False,
            start_method=method or start_method(),
        )
        deadline = time.monotonic() + gloo_timeout_s + rank_timeout_s + 30
        try:
            # join() raises ProcessRaisedException / ProcessExitedException with the failing rank's
            # traceback or exit code; it returns True once every rank has exited cleanly.
            while not context.join(timeout=1):
                if time.monotonic() > deadline:
                    alive = [rank for rank, process in enumerate(context.processes) if process.is_alive()]
                    raise TimeoutError(f"gloo ranks {alive} still running past their deadline")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                process.join()


def _rank_main(
    rank: int,
    world: int,
    init_file: str,
    gloo_timeout_s: float,
    rank_timeout_s: float,
    work: Callable[..., None],
    args: tuple,
) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=gloo_timeout_s),
    )
    faulthandler.dump_traceback_later(rank_timeout_s, exit=True)
    try:
        work(rank, world, *args)
    except BaseException as error:
        # The traceback keeps the frames of ``work`` alive, and with them a DistributedDataParallel
        # whose reducer holds the group: its locals go before the group does (below).
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        # A DDP reducer freed after destroy_process_group can leave the group's destructor waiting
        # forever on a lock (seen in CI: a rank hung for 45 min), so everything ``work`` left goes first.
        gc.collect()
        dist.destroy_process_group()
        faulthandler.cancel_dump_traceback_later()


#: What torchrun prints for a rank that died of SIGABRT.
_ABORT_SIGNATURES = ("Signal 6 (SIGABRT)", "exitcode  : -6")


def run_torchrun(script_and_args: list[str], *, env: dict[str, str] | None = None, timeout: int = 600,
                 nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N SCRIPT ARGS`` (a free port every
    time), output captured as text.

    A launch in which a rank dies of SIGABRT is run once more, with a warning that carries its
    output: that abort has been seen twice in about 25 launches on 2-core CI machines, always in a
    rank's first seconds (before any training step), never reproduced in a loop, cause not found
    (docs/RELIABILITY.md). Any other failure is returned as it is, for the test to assert on.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               *script_and_args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 and any(signature in done.stderr for signature in _ABORT_SIGNATURES):
        warnings.warn("a torchrun rank died of SIGABRT; launched again. Its output:\n" + done.stderr[-6000:],
                      RuntimeWarning, stacklevel=2)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    return done
