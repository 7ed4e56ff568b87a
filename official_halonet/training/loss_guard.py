"""Stops a run whose training loss blew up, before the next checkpoint is written.

An Orbit train action, called after every `steps_per_loop` steps with the loop's outputs (the mean
`training_loss` over the loop). Orbit saves a checkpoint only after the loop's actions have run, so
raising here keeps the last checkpoint on disk the last good one. It takes the place of Model
Garden's blow-up check for `trainer.recovery_max_trials = 0` (stop at once, which every experiment
here sets) and raises a typed error instead of a RuntimeError whose text has to be read.
"""
import math
from typing import Mapping

import tensorflow as tf

LOSS = "training_loss"


class LossBlowupError(RuntimeError):
  """The training loss is NaN, infinite or above `bound` after `step` steps."""

  def __init__(self, step: int, loss: float, bound: float):
    super().__init__(f"the training loss at step {step} is {loss:g} (NaN, infinite or above "
                     f"trainer.loss_upper_bound={bound:g}).")
    self.step = step
    self.loss = loss
    self.bound = bound


class LossGuard:
  """Raises LossBlowupError when the loop's loss is not finite, or above `loss_upper_bound` once
  `global_step` >= `begin_step` (Model Garden's trainer.recovery_begin_steps)."""

  def __init__(self, global_step: tf.Variable, loss_upper_bound: float, begin_step: int = 0):
    self._global_step = global_step
    self._bound = loss_upper_bound
    self._begin_step = begin_step

  def __call__(self, outputs: Mapping[str, tf.Tensor]) -> None:
    if LOSS not in outputs:
      return
    loss, step = float(outputs[LOSS]), int(self._global_step.numpy())
    if not math.isfinite(loss) or (step >= self._begin_step and loss > self._bound):
      raise LossBlowupError(step, loss, self._bound)
