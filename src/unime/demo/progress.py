"""The console of ``unime demo``: one line per step, everything the libraries say in ``demo.log``.

A demo step loads models, trains and encodes through transformers and sentence-transformers, each
of which draws its own progress bars (one per model load, per ``Writing model shards``, per teacher
encode), prints the trainer's log dictionaries and logs per data set. Inside :class:`DemoConsole`
the console shows only ``[5/16] stage 1: ... done in 42 s`` per step: the bars that can be
switched off are (transformers' and huggingface_hub's), and what is still written to
``sys.stdout`` / ``sys.stderr`` (the trainer's log lines, sentence-transformers' bars) and every log
record go to the run's log file instead. Leaving the context restores all of it, so the bar of a
user's own ``unime encode`` is untouched.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TextIO


class _Counter(logging.Handler):
    """Counts warnings and errors, so a step's line can say that demo.log holds some."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class DemoConsole:
    """``with DemoConsole(total, log) as console:`` then ``with console.step("message") as notes:``
    per step; ``notes`` (a list) takes short results for the end of the step's line."""

    def __init__(self, total: int, log: Path, console: TextIO | None = None) -> None:
        self.total, self.index, self.log = total, 0, Path(log)
        self.console = console if console is not None else sys.stdout
        self._stack = contextlib.ExitStack()
        self._counter = _Counter()

    def __enter__(self) -> DemoConsole:
        stream = self._stack.enter_context(self.log.open("a", encoding="utf-8"))
        self._stack.enter_context(contextlib.redirect_stdout(stream))
        self._stack.enter_context(contextlib.redirect_stderr(stream))
        self._stack.callback(_progress_bars_off())
        self._stack.callback(_log_records_to(stream, self._counter))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stack.close()

    @contextlib.contextmanager
    def step(self, message: str) -> Iterator[list[str]]:
        self.index += 1
        self._print(f"[{self.index}/{self.total}] {message} ...", end="")
        start, warnings, notes = time.perf_counter(), self._counter.count, []
        try:
            yield notes
        except BaseException:
            self._print(f" failed after {time.perf_counter() - start:.0f} s (details in {self.log})")
            raise
        line = f" done in {time.perf_counter() - start:.0f} s"
        warned = self._counter.count - warnings
        if warned:
            line += f" ({warned} warning{'s' if warned > 1 else ''} in {self.log.name})"
        self._print(line + (": " + "; ".join(notes) if notes else ""))

    def _print(self, text: str, end: str = "\n") -> None:
        print(text, end=end, file=self.console, flush=True)


def _progress_bars_off() -> Callable[[], None]:
    """Switch transformers' and huggingface_hub's bars off; returns what switches them back."""
    import huggingface_hub.utils as hub
    from transformers.utils import logging as transformers_logging

    transformers_on, hub_off = transformers_logging.is_progress_bar_enabled(), hub.are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # also huggingface_hub's
    hub.disable_progress_bars()

    def restore() -> None:
        if transformers_on:
            transformers_logging.enable_progress_bar()
        if hub_off:
            hub.disable_progress_bars()
        else:
            hub.enable_progress_bars()

    return restore


def _log_records_to(stream: TextIO, counter: logging.Handler) -> Callable[[], None]:
    """Send log records to ``stream`` instead of the console (the root logger's plain stream
    handlers, as ``logging.basicConfig`` adds them); returns what undoes it."""
    root = logging.getLogger()
    to_file = logging.StreamHandler(stream)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    muted = [(handler, handler.level) for handler in root.handlers if type(handler) is logging.StreamHandler]
    for handler, _ in muted:
        handler.setLevel(logging.CRITICAL + 1)
    root.addHandler(to_file)
    root.addHandler(counter)

    def restore() -> None:
        root.removeHandler(to_file)
        root.removeHandler(counter)
        for handler, level in muted:
            handler.setLevel(level)

    return restore
