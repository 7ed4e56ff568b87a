"""Orbit eval actions: one console line per evaluation, and attention maps in TensorBoard.

`EvalLine` prints 'eval | accuracy 0.9633 | ... | step 700' after every evaluation.
`AttentionSummary` draws, after every evaluation, the attention maps (models/attention_figure.py)
of a few fixed validation images with the model's current weights, the first attention layer of
each resolution, queried at the image centre, and writes them to <model_dir>/attention as images
('attention/image_<i>') with the mean attention distance per layer and head as scalars, so the
maps can be watched sharpening in TensorBoard's Images tab.
"""
import os
from typing import Any, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

from official_halonet.models import attention_figure
from official_halonet.models import attention_maps

SUBDIR = "attention"
POINTS = ((0.5, 0.5),)


def eval_line(logs: Mapping[str, Any]) -> str:
  """'eval | accuracy 0.9633 | best_accuracy 0.9633 | ...' from the scalar eval logs."""
  scalars = {k: float(np.mean(v)) for k, v in logs.items() if np.size(v) == 1}
  return "eval | " + " | ".join(f"{k} {v:.4f}" for k, v in sorted(scalars.items()))


class EvalLine:
  """Prints one line per evaluation (the global step last) and keeps the last evaluation's logs
  (`logs`, None before the first); an evaluation of the step just evaluated is not printed again."""

  def __init__(self, global_step: tf.Variable):
    self._global_step = global_step
    self._printed_step = None
    self.logs = None

  def __call__(self, logs: Mapping[str, Any]) -> None:
    step = int(self._global_step.numpy())
    if step != self._printed_step:
      print(f"{eval_line(logs)} | step {step}", flush=True)
    self._printed_step = step
    self.logs = logs


def fixed_images(dataset: tf.data.Dataset, count: int) -> np.ndarray:
  """The first `count` images of the (unshuffled) validation dataset, [count, S, S, 3]."""
  images, _ = next(iter(dataset))
  return images.numpy()[:count]


def one_layer_per_resolution(attentions: Sequence[attention_maps.LayerAttention]):
  seen, kept = set(), []
  for attention in attentions:
    if attention.pixel not in seen:
      seen.add(attention.pixel)
      kept.append(attention)
  return kept


class AttentionSummary:
  """Writes the attention maps of fixed images at every evaluation (see module docstring)."""

  def __init__(self, model, images: np.ndarray, model_dir: str, global_step: tf.Variable,
               points: Sequence[Tuple[float, float]] = POINTS):
    self._model = model
    self._images = images
    self._points = points
    self._global_step = global_step
    self._writer = tf.summary.create_file_writer(os.path.join(model_dir, SUBDIR))

  def __call__(self, logs: Mapping[str, Any]) -> None:
    del logs
    step = int(self._global_step.numpy())
    attentions = one_layer_per_resolution(attention_maps.probe(self._model, self._images))
    shown = attention_figure.displayable(self._images)
    with self._writer.as_default(step=step):
      for index in range(len(self._images)):
        fig = attention_figure.figure(shown[index], attentions, self._points, index)
        png = tf.image.decode_png(attention_figure.png_bytes(fig), channels=3)
        tf.summary.image(f"attention/image_{index}", png[None])
      for attention in attentions:
        for head, distance in enumerate(attention_maps.mean_distance(attention)):
          tf.summary.scalar(f"attention_distance/{attention.name}/head_{head + 1}", distance)
    self._writer.flush()
