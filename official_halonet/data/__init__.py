"""Input pipelines for HaloNet / SASA: ImageNet (converter and TFDS), ImageNet-21k, and any
folder of images converted to TFRecords.

  config.DataConfig, validate_config, tfds_imagenet_config, imagenet21k_config
  pipeline.build_dataset(config, input_context=None) -> tf.data.Dataset
  records: the ImageNet TFRecord format (keys, shard names, make_example, LabelMap)
  convert: `python -m official_halonet.data.convert` folder / NumPy -> sharded TFRecords
  validate: `python -m official_halonet.data.validate` scans shards before training
"""
from official_halonet.data.config import DataConfig
from official_halonet.data.config import imagenet21k_config
from official_halonet.data.config import tfds_imagenet_config
from official_halonet.data.config import validate_config
from official_halonet.data.pipeline import build_dataset
