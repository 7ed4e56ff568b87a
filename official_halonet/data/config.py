"""Data settings: Model Garden's image classification `DataConfig` plus what HaloNet adds.

`DataConfig` subclasses `official.vision.configs.image_classification.DataConfig`, so it drops
into a Model Garden `ImageClassificationTask` config (`task.train_data` / `task.validation_data`)
and every Model Garden field keeps its meaning (input_path, global_batch_size, is_training,
shuffle_buffer_size, cycle_length, cache, seed, deterministic, aug_rand_hflip, aug_crop,
crop_area_range, aug_type, color_jitter, random_erasing, mixup_and_cutmix, center_crop_fraction,
tf_resize_method, image_field_key, label_field_key, is_multilabel, dtype, ...).

Added fields:
  num_classes        number of classes the model predicts (required, > 0).
  label_offset       stored label of class 0 (required): 1 for TFRecords from the standard
                     ImageNet converter (labels 1..1000, 0 = background), 0 for TFDS and for
                     most other data (labels 0..N-1). Every label is checked to lie in
                     [label_offset, label_offset + num_classes).
  image_size         output height = width in pixels.
  randaug_magnitude  RandAugment magnitude (Model Garden's `augment.RandAugment`), 0 = off.
                     Setting it together with `aug_type` is an error. Model Garden scales
                     magnitudes on a 0..10 level scale (`augment._MAX_LEVEL`); larger values,
                     as the HaloNet table uses (up to 31), extrapolate linearly.
  randaug_num_layers number of RandAugment ops per image.
  mixup_alpha, cutmix_alpha, mixup_label_smoothing
                     Model Garden `augment.MixupAndCutmix` on training batches (single-label
                     only); 0 = off. May not be combined with `mixup_and_cutmix`.
  on_bad_image       'raise': an image that cannot be decoded stops the input with the shard
                     and record named; 'skip': it is dropped and reported on stderr.
  guard_decode       decode records (in groups of 16) inside a guard that names the shard and
                     record of an undecodable image, at a cost in input throughput
                     (docs/input_speed.md). False leaves
                     TensorFlow's own decode error, which names neither; run
                     `python -m official_halonet.data.validate --decode_images` first then.
  check_shard_sizes  compare each shard's file size with the bytes its records used, so a
                     truncated or corrupt shard stops with the shard and record named instead
                     of TensorFlow's bare "truncated record at <byte offset>".
  eval_num_batches   eval only: the number of eval steps. Every host's eval data is padded with
                     masked examples to exactly this many steps, i.e. this many per-replica
                     batches for each replica the host feeds (multi-host eval must run the same
                     number of steps on every host). None: ceil(examples on this host / batch).
  tfds_name, tfds_split, tfds_data_dir (Model Garden fields)
                     read a TFDS-built dataset (e.g. 'imagenet2012') from its TFRecord files
                     through the same path as plain TFRecords, so shard/record reporting and
                     sharding are identical. Image/label keys default to TFDS's 'image'/'label'.
"""
import dataclasses
from typing import Optional

from official.vision.configs import image_classification

ON_BAD_IMAGE_CHOICES = ('raise', 'skip')


@dataclasses.dataclass
class DataConfig(image_classification.DataConfig):
  """Input settings for HaloNet / SASA image classification (see the module docstring)."""
  num_classes: int = 0
  label_offset: Optional[int] = None
  image_size: int = 224
  randaug_magnitude: Optional[int] = 0
  randaug_num_layers: int = 2
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mixup_label_smoothing: float = 0.0
  on_bad_image: str = 'raise'
  guard_decode: bool = True
  check_shard_sizes: bool = True
  eval_num_batches: Optional[int] = None


def validate_config(config: DataConfig) -> None:
  """Raises ValueError naming the offending field if `config` cannot be built."""
  if config.num_classes is None or config.num_classes <= 0:
    raise ValueError(f'DataConfig.num_classes must be > 0, got {config.num_classes}.')
  if config.label_offset is None:
    raise ValueError(
        'DataConfig.label_offset must be set explicitly: 1 for TFRecords written by the '
        'standard ImageNet converter (labels 1..1000, 0 = background), 0 for TFDS-built '
        'data and for labels 0..N-1.')
  if config.global_batch_size <= 0:
    raise ValueError(f'DataConfig.global_batch_size must be > 0, got {config.global_batch_size}.')
  if config.image_size <= 0:
    raise ValueError(f'DataConfig.image_size must be > 0, got {config.image_size}.')
  if not config.input_path and not config.tfds_name:
    raise ValueError('Set DataConfig.input_path (TFRecord file patterns) or tfds_name.')
  if config.input_path and config.tfds_name:
    raise ValueError('Set only one of DataConfig.input_path and tfds_name.')
  if config.tfds_name and not config.tfds_split:
    raise ValueError('DataConfig.tfds_split must be set with tfds_name.')
  if config.on_bad_image not in ON_BAD_IMAGE_CHOICES:
    raise ValueError(f'DataConfig.on_bad_image must be one of {ON_BAD_IMAGE_CHOICES}, '
                     f'got {config.on_bad_image!r}.')
  if config.randaug_magnitude and config.aug_type is not None and config.aug_type.type:
    raise ValueError('Set either DataConfig.randaug_magnitude or aug_type, not both.')
  if config.randaug_magnitude is not None and config.randaug_magnitude < 0:
    raise ValueError(f'DataConfig.randaug_magnitude must be >= 0, got {config.randaug_magnitude}.')
  uses_alphas = config.mixup_alpha > 0 or config.cutmix_alpha > 0
  if uses_alphas and config.mixup_and_cutmix is not None:
    raise ValueError('Set either DataConfig.mixup_alpha/cutmix_alpha or mixup_and_cutmix, '
                     'not both.')
  if (uses_alphas or config.mixup_and_cutmix is not None) and config.is_multilabel:
    raise ValueError('Mixup/CutMix (Model Garden MixupAndCutmix) needs single-label data; '
                     'is_multilabel=True.')
  if config.eval_num_batches is not None and config.eval_num_batches <= 0:
    raise ValueError(f'DataConfig.eval_num_batches must be > 0, got {config.eval_num_batches}.')


def tfds_imagenet_config(split: str, is_training: bool, global_batch_size: int,
                         image_size: int = 224, data_dir: str = '',
                         **overrides) -> DataConfig:
  """TFDS-built `imagenet2012`: labels 0..999 (label_offset=0)."""
  return DataConfig(tfds_name='imagenet2012', tfds_split=split, tfds_data_dir=data_dir,
                    is_training=is_training, global_batch_size=global_batch_size,
                    image_size=image_size, num_classes=1000, label_offset=0, **overrides)


def imagenet21k_config(input_path: str, is_training: bool, global_batch_size: int,
                       num_classes: int = 21843, label_offset: int = 0,
                       multilabel: bool = False, image_size: int = 224,
                       **overrides) -> DataConfig:
  """ImageNet-21k TFRecords: `num_classes` (21843 for the fall-2011 release) classes.

  multilabel=False: one int64 label per record, softmax loss. multilabel=True: a list of int64
  labels per record, returned as a multi-hot float32 [num_classes] vector for a sigmoid loss.
  """
  return DataConfig(input_path=input_path, is_training=is_training,
                    global_batch_size=global_batch_size, image_size=image_size,
                    num_classes=num_classes, label_offset=label_offset,
                    is_multilabel=multilabel, **overrides)
