"""The one way a training stage runs (``unime align``, ``distill``, ``tune``, ``tune-bank``).

:func:`run_stage` does what every stage shares, in this order: the recipe's required settings, the
installed stack, the stage's own launch checks, the model name (all before anything is read or
loaded); the checkpoint to resume from (a folder holding an earlier run's checkpoints is refused
without ``resume``); the stage's set-up (its data, model and trainer: the stage's own code); the
training, resumed where it stopped; the final save with the stage recorded in the model's config;
and, on the main process, the trainer's log history as ``training_log.jsonl`` beside the model,
then the stage's own summary files.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: The trainer's log history (loss, gradient norm, learning rate, the losses' statistics), one JSON
#: object per logged step, beside every trained model.
TRAINING_LOG = "training_log.jsonl"


@dataclass
class StageRun:
    """What a stage's set-up hands the runner.

    Attributes:
        trainer: a transformers ``Trainer`` ready to train.
        model: the UniME model to save when training ends.
        after_training: called after ``train()`` returns, before saving (e.g. a last evaluation).
        record: called on the main process with the output folder, the train result and the seconds
            trained, after the save: writes the stage's own files beside the model.
    """

    trainer: Any
    model: Any
    after_training: Callable[[], None] | None = None
    record: Callable[[Path, Any, float], None] | None = None


def write_training_log(output: Path, trainer: Any) -> None:
    from unime.io.integrity import write_text_atomic

    write_text_atomic(output / TRAINING_LOG, "".join(json.dumps(entry) + "\n" for entry in trainer.state.log_history))


def run_stage(
    stage: str,
    recipe: Any,
    setup: Callable[[Any, list[Any] | None], StageRun],
    callbacks: list[Any] | None = None,
    checks: Sequence[Callable[[Any], None]] = (),
) -> Path:
    """Run a stage (see the module docstring) and return the folder the model was saved to.

    ``setup(recipe, callbacks)`` builds the stage's data, model and trainer; ``checks`` are the
    stage's own launch checks, run before anything is read or loaded."""
    from unime.environment import require_compatible
    from unime.training.saving import save_final
    from unime.training.trainer import resume_checkpoint

    recipe.check_runnable()
    require_compatible()
    for check in checks:
        check(recipe)
    recipe.check_model()
    checkpoint = resume_checkpoint(recipe)
    run = setup(recipe, callbacks)
    trainer = run.trainer
    if checkpoint:
        logger.info("%s: resuming from %s", stage, checkpoint)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    if run.after_training is not None:
        run.after_training()
    seconds = time.perf_counter() - start
    output = save_final(run.model, recipe.output_dir, stage, recipe)
    if trainer.is_world_process_zero():
        write_training_log(output, trainer)
        if run.record is not None:
            run.record(output, result, seconds)
        logger.info("%s: %d steps in %.0f s; wrote %s", stage, trainer.state.global_step, seconds, output)
    return output
