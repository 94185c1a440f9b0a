"""``unime demo``: the run, its report and figures, its one-line-per-step progress."""
