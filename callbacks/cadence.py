"""When the logger writes: shared by the callbacks that log once per logging interval."""

from __future__ import annotations

import lightning as L


def logs_this_step(trainer: L.Trainer) -> bool:
    """Whether the logger writes at this step: every `log_every_n_steps`, and at the last step (the module asks the
    run to stop there, after the batch's hooks)."""
    return trainer._logger_connector.should_update_logs or trainer.global_step >= trainer.max_steps
