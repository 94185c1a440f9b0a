"""Helpers of the multi-process tests (imported by the test modules, like eval_fixtures)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now, for a gloo rendezvous."""
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
