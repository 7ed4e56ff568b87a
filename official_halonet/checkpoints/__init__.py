"""Checkpoints: below training and export, which both read and restore through it.

  match.match(model, path)          pair a model's variables with a checkpoint's (nothing read yet)
  restore.restore(model, path, ...) the one strict restore: EMA or raw weights, modules 'all' or
                                    'backbone' (classifier zeroed), optional relative-table resizing
  run_files                         what a killed run leaves behind: atomic best_ckpt/info.json,
                                    partial ckpt-N_temp saves removed

Submodules are imported on use (they import TensorFlow).
"""
