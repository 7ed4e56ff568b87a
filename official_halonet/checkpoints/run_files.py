"""Checkpoint files a killed run leaves behind, and a best-checkpoint record that survives kills.

Model Garden's `BestCheckpointExporter` rewrites `<model_dir>/best_ckpt/info.json` in place; a kill
between the truncate and the write leaves an empty file, and every restart then fails in
`json.loads`. `BestCheckpointExporter` here writes the record to a temporary file and renames it
over the old one (atomic on a local file system; a GCS object is never half written), and on
restart treats an unreadable record as "no best yet" with a warning instead of failing.

A kill during a sharded checkpoint save leaves a `ckpt-<N>_temp` directory (TensorFlow writes the
shards there, then merges them into ckpt-<N>.index / .data); `remove_partial_saves` deletes them.
"""
import json
import os
from typing import Any, Dict, List, Optional

from absl import logging
import tensorflow as tf

from official.core import train_utils

TEMPORARY_SUFFIX = ".tmp"


class BestCheckpointExporter(train_utils.BestCheckpointExporter):
  """Model Garden's exporter with an atomic info.json and a restart that survives a bad one."""

  def _maybe_load_best_eval_metric(self) -> Optional[Dict[str, Any]]:
    path = self.best_ckpt_logs_path
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path, "r") as reader:
      text = reader.read()
    try:
      return json.loads(text)
    except ValueError:
      logging.warning("%s is unreadable (%d bytes; a run killed while writing it): removed. "
                      "The next evaluation becomes the best checkpoint.", path, len(text))
      print(f"Removed the unreadable {path} (a run killed while writing it); the next "
            f"evaluation becomes the best checkpoint.", flush=True)
      tf.io.gfile.remove(path)
      return None

  def export_best_eval_metric(self, eval_logs, global_step) -> None:
    """Model Garden's record, written to info.json.tmp and renamed over info.json."""
    self._writing = True  # best_ckpt_logs_path names the temporary file meanwhile
    try:
      super().export_best_eval_metric(eval_logs, global_step)
    finally:
      self._writing = False
    final = self.best_ckpt_logs_path
    tf.io.gfile.rename(final + TEMPORARY_SUFFIX, final, overwrite=True)

  @property
  def best_ckpt_logs_path(self) -> str:
    path = super().best_ckpt_logs_path
    return path + TEMPORARY_SUFFIX if getattr(self, "_writing", False) else path


def maybe_create_best_ckpt_exporter(config, model_dir: str) -> Optional[BestCheckpointExporter]:
  """As Model Garden's `train_utils.maybe_create_best_ckpt_exporter`, with the exporter above."""
  trainer = config.trainer
  if not (model_dir and trainer.best_checkpoint_export_subdir and
          trainer.best_checkpoint_eval_metric):
    return None
  return BestCheckpointExporter(os.path.join(model_dir, trainer.best_checkpoint_export_subdir),
                                trainer.best_checkpoint_eval_metric,
                                trainer.best_checkpoint_metric_comp)


def remove_partial_saves(model_dir: str) -> List[str]:
  """Deletes `*_temp` save directories under model_dir and its subdirectories; returns them.

  Call before the run's checkpoint manager starts (nothing is being saved then).
  """
  removed = []
  for pattern in ("*_temp", "*/*_temp"):
    for path in tf.io.gfile.glob(os.path.join(model_dir, pattern)):
      if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
        removed.append(path)
  if removed:
    print(f"Removed {len(removed)} partial checkpoint save(s) of a killed run: "
          f"{', '.join(sorted(removed))}", flush=True)
  return removed


def best_checkpoint_record(model_dir: str, best_subdir: str) -> Optional[Dict[str, Any]]:
  """Model Garden's record of the best checkpoint, model_dir/<best_subdir>/info.json: its eval
  metrics and 'best_ckpt_global_step'; None when the run kept none."""
  path = os.path.join(model_dir, best_subdir, "info.json")
  if not model_dir or not best_subdir or not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
