"""Export and publishing: SavedModel with serving signatures, TF Hub modules, strict checkpoints.

  saved_model.export_from_run(options, export_dir)   main.py --mode=export
  hub.publish_from_run(options, output_dir)          TF Hub classifier + feature-vector modules
  checkpoints.match(model, path)                     pair a model's variables with a checkpoint's

Submodules are imported on use (they import TensorFlow and Model Garden).
"""
