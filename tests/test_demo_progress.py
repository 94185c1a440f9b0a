"""The demo's console: one line per step; bars, printed dictionaries and log records go to demo.log."""

from __future__ import annotations

import logging
import re
import sys

import huggingface_hub.utils as hub
import pytest
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

from unime.demo.progress import DemoConsole


def test_steps_are_single_lines_and_the_libraries_write_to_the_log(tmp_path, capfd):
    bars_before = (transformers_logging.is_progress_bar_enabled(), hub.are_progress_bars_disabled())
    console_handler = logging.StreamHandler(sys.stderr)  # what logging.basicConfig adds under the CLI
    root = logging.getLogger()
    root.addHandler(console_handler)
    log = tmp_path / "demo.log"
    try:
        with DemoConsole(total=3, log=log) as console:
            with console.step("evaluating the base model") as notes:
                assert not transformers_logging.is_progress_bar_enabled() and hub.are_progress_bars_disabled()
                for _ in tqdm(range(3), desc="Batches"):  # sentence-transformers' bar, which no switch reaches
                    pass
                print({"loss": 1.5})  # the trainer's PrinterCallback
                logging.getLogger("unime.training.trainer").warning("the embeddings are collapsing")
                notes.append("I2T R@1 4.2")
            with console.step("stage 1"):
                logging.getLogger("unime.training.saving").warning("a second warning")
                logging.getLogger("unime.training.saving").warning("a third")
            with pytest.raises(RuntimeError, match="boom"), console.step("stage 2"):
                raise RuntimeError("boom")
        # Leaving the console gives the console its log records back, and only its own handler.
        assert console_handler.level == logging.NOTSET and root.handlers[-1] is console_handler
    finally:
        root.removeHandler(console_handler)
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert re.fullmatch(r"\[1/3\] evaluating the base model \.\.\. done in \d+ s \(1 warning in demo\.log\): "
                        r"I2T R@1 4\.2", lines[0]), lines
    assert re.fullmatch(r"\[2/3\] stage 1 \.\.\. done in \d+ s \(2 warnings in demo\.log\)", lines[1]), lines
    assert re.fullmatch(rf"\[3/3\] stage 2 \.\.\. failed after \d+ s \(details in {re.escape(str(log))}\)", lines[2])
    assert len(lines) == 3 and err == ""
    text = log.read_text()
    assert "Batches: 100%" in text and "{'loss': 1.5}" in text
    assert "WARNING unime.training.trainer: the embeddings are collapsing" in text
    # ... and the user's progress bars.
    assert (transformers_logging.is_progress_bar_enabled(), hub.are_progress_bars_disabled()) == bars_before
