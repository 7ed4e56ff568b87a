"""A readable training log: step, loss, accuracy, learning rate, images/sec and ETA.

An Orbit train action (called after every `steps_per_loop` steps with the loop's outputs), added
beside Model Garden's own actions; Model Garden's controller already writes TensorBoard summaries.
"""
import datetime
import time
from typing import Mapping

from absl import logging
import numpy as np
import tensorflow as tf


class ProgressLogger:
  """Logs 'step 1200/437500 (0.3%) | loss 6.512 | accuracy 0.021 | lr 0.48 | 3310 img/s | ETA'."""

  def __init__(self, global_step: tf.Variable, total_steps: int, global_batch_size: int):
    self._global_step = global_step
    self._total_steps = total_steps
    self._batch = global_batch_size
    self._last_step = None
    self._last_time = None

  def __call__(self, outputs: Mapping[str, tf.Tensor]) -> None:
    step, now = int(self._global_step.numpy()), time.monotonic()
    parts = [f"step {step}/{self._total_steps} ({100.0 * step / self._total_steps:.1f}%)"]
    for key, label in (("training_loss", "loss"), ("accuracy", "accuracy"),
                       ("learning_rate", "lr")):
      if key in outputs:
        parts.append(f"{label} {float(np.mean(outputs[key])):.4g}")
    if self._last_step is not None and step > self._last_step:
      steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
      remaining = (self._total_steps - step) / steps_per_sec
      parts.append(f"{steps_per_sec * self._batch:.1f} img/s")
      parts.append(f"ETA {datetime.timedelta(seconds=int(remaining))}")
    self._last_step, self._last_time = step, now
    line = " | ".join(parts)
    logging.info("train | %s", line)
    print(line, flush=True)
