"""Export and publishing: SavedModel with serving signatures, TF Hub modules.

  saved_model.export_from_run(options, export_dir)   main.py --mode=export
  hub.publish_from_run(options, output_dir)          TF Hub classifier + feature-vector modules

Checkpoints are read through official_halonet.checkpoints (restore.restore, the strict restore).

Submodules are imported on use (they import TensorFlow and Model Garden).
"""
