"""Helpers of the training tests."""

from __future__ import annotations

from typing import Any


def stop_at(step: int) -> Any:
    """A trainer callback that stops training after ``step`` (its checkpoint is written first), as a
    killed run would leave it; the resume tests continue from there."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                control.should_training_stop = True
            return control

    return StopAt()
