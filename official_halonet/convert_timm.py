"""Converts one of timm's ImageNet-trained HaloNets into a checkpoint and a served SavedModel.

    python -m official_halonet.convert_timm --timm_model=halonet26t \\
        --weights=model.safetensors --output_dir=/models/halonet26t

reads the weights (official_halonet.models.timm_weights: every tensor mapped, anything missing,
unexpected or mis-shaped refused with the file and tensor named, before anything is written) and
writes into --output_dir (which must be empty or absent):

  checkpoint/ckpt-1.*   tf.train.Checkpoint(model=..., backbone=...), the layout Model Garden's
                        trainer writes: `experiment.init_checkpoint` (fine-tuning, gin/timm/) and
                        the detection configurations' backbone initialisation accept it
  saved_model/          this project's serving signatures (image_bytes / image_tensor / tf_example,
                        export/saved_model.py), preprocessing with timm's crop fraction and
                        interpolation for the model and the ImageNet mean / std
  conversion.json       the source file, its SHA-256, the tensors converted, the preprocessing

timm's weights come from https://huggingface.co/timm/<model>.<tag>/ (model.safetensors), e.g.
halonet26t.a1h_in1k, sehalonet33ts.ra2_in1k, halonet50ts.a1h_in1k, eca_halonext26ts.c1_in1k.
"""
import hashlib
import json
import os
import sys

import official_halonet  # noqa: F401  (selects tf_keras before TensorFlow is imported)

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("timm_model", None, "timm's model name, e.g. halonet26t.")
flags.DEFINE_string("weights", None, "timm's model.safetensors (or a .pth with torch installed).")
flags.DEFINE_string("output_dir", None, "Where the checkpoint and SavedModel go (empty or new).")
flags.DEFINE_bool("saved_model", True, "Also write the SavedModel (else only the checkpoint).")
flags.DEFINE_bool("verbose", False, "Show TensorFlow's and absl's log lines on the console (by "
                  "default they go to <temp>/official_halonet/convert_timm.log).")
flags.DEFINE_string("formats", "saved_model", "Formats written beside the SavedModel, each "
                    "checked against the Keras model: saved_model, tflite, onnx, openvino "
                    "(official_halonet/export/formats.py).")

CHECKPOINT_SUBDIR = "checkpoint"
SAVED_MODEL_SUBDIR = "saved_model"
_PLACEHOLDER_INPUT = "/convert_timm/needs/no/data-*"


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def experiment_config(name: str, num_classes: int):
  """The classification ExperimentConfig of model `name` (only its model and eval data matter)."""
  from official_halonet.training import experiment  # pylint: disable=g-import-not-at-top
  # Built without gin, so bindings parsed earlier in the same process (a training run, a test)
  # cannot change the converted model's preprocessing.
  return experiment.build(experiment.Settings(
      model_id=name, num_classes=num_classes, train_input_path=_PLACEHOLDER_INPUT,
      eval_input_path=_PLACEHOLDER_INPUT, global_batch_size=1))


def convert(name: str, weights: str, output_dir: str, saved_model: bool = True,
            formats: str = "saved_model") -> dict:
  """Converts and writes everything (see module docstring); returns the conversion record.
  `formats` as export/formats.py: deploy formats go into saved_model/ with their parity in
  conversion.json['deploy']."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from official_halonet import models  # pylint: disable=g-import-not-at-top
  from official_halonet.export import formats as formats_lib  # pylint: disable=g-import-not-at-top
  from official_halonet.export import saved_model as export  # pylint: disable=g-import-not-at-top
  from official_halonet.models import timm_weights  # pylint: disable=g-import-not-at-top

  if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
    raise models.TimmWeightsError(f"--output_dir {output_dir} exists and is not an empty "
                                  f"directory; choose a new one")
  try:
    names = formats_lib.parse_formats(formats)
    model = models.from_timm(name, weights)  # every check happens here, before any write
    formats_lib.check_model(model, names if saved_model else ())
  except formats_lib.FormatError as e:
    raise models.TimmWeightsError(str(e)) from None
  num_classes = int(timm_weights.classifier(model).kernel.shape[-1])
  config = experiment_config(name, num_classes)
  spec = models.get_spec(name)
  os.makedirs(output_dir, exist_ok=True)
  checkpoint = tf.train.Checkpoint(model=model, **model.checkpoint_items)
  checkpoint_path = checkpoint.save(os.path.join(output_dir, CHECKPOINT_SUBDIR, "ckpt"))
  record = dict(
      timm_model=name, weights=os.path.abspath(weights), sha256=_sha256(weights),
      num_classes=num_classes, checkpoint=checkpoint_path,
      parameters=int(sum(int(v.shape.num_elements()) for v in model.trainable_weights)),
      image_size=spec.image_size,
      eval_center_crop_fraction=config.task.validation_data.center_crop_fraction,
      eval_resize_method=config.task.validation_data.tf_resize_method)
  if saved_model:
    path = os.path.join(output_dir, SAVED_MODEL_SUBDIR)
    try:
      deploy = formats_lib.export_deploy(model, config.task.validation_data, names, path)
    except formats_lib.FormatError as e:
      raise models.TimmWeightsError(str(e)) from None
    record["saved_model"] = export.export_saved_model(model, config, path)
    record.update({"deploy": deploy} if deploy else {})
  with open(os.path.join(output_dir, "conversion.json"), "w") as f:
    json.dump(record, f, indent=1)
  return record


def main(argv):
  del argv
  from official_halonet import console  # pylint: disable=g-import-not-at-top
  console.quiet(console.tool_log_path("convert_timm"), FLAGS.verbose)
  from official_halonet import models  # pylint: disable=g-import-not-at-top
  missing = [f"--{n}" for n in ("timm_model", "weights", "output_dir") if not getattr(FLAGS, n)]
  if missing:
    print(f"convert_timm: {', '.join(missing)} required", file=sys.stderr)
    return 2
  try:
    record = convert(FLAGS.timm_model, FLAGS.weights, FLAGS.output_dir, FLAGS.saved_model,
                     FLAGS.formats)
  except models.TimmWeightsError as e:
    print(f"convert_timm: {e}", file=sys.stderr)
    return 1
  print(f"convert_timm | {record['timm_model']} ({record['parameters']:,} parameters, "
        f"{record['num_classes']} classes) -> {record['checkpoint']}"
        + (f", SavedModel {record['saved_model']}" if "saved_model" in record else ""),
        flush=True)
  return 0


if __name__ == "__main__":
  app.run(main)
