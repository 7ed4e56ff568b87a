"""Input pipelines for HaloNet / SASA: ImageNet (converter and TFDS), ImageNet-21k, and any
folder of images converted to TFRecords.

  config.DataConfig, validate_config, tfds_imagenet_config, imagenet21k_config
  pipeline.build_dataset(config, input_context=None) -> tf.data.Dataset, wiring the stages:
    input_files: which TFRecord files a config reads (input_path patterns or a TFDS split)
    record_labels: the decoder that checks and shifts each record's label; multi-hot labels
    image_parser: encoded image -> model input (training, eval, serving); bad images named
    eval_batching: static-shape eval batches padded with masked examples
    element_keys: the keys of the dicts the stages pass on and eval batches carry
  images: image bytes / pixels -> the parser's input (every format; tiny images enlarged)
  shards: reading TFRecord shards so every record carries its shard and index
  errors: a bad record as a value (DataError), recovered from TensorFlow's assertion
  records: the ImageNet TFRecord format (keys, shard names, make_example, LabelMap)
  convert: `python -m official_halonet.data.convert` folder / NumPy -> sharded TFRecords
  validate: `python -m official_halonet.data.validate` scans shards before training
  command_line: the absl command line of convert and validate
"""
from official_halonet.data.config import DataConfig
from official_halonet.data.config import imagenet21k_config
from official_halonet.data.config import tfds_imagenet_config
from official_halonet.data.config import validate_config
from official_halonet.data.pipeline import build_dataset
