"""Helpers for tests/test_detection.py: COCO-format TFRecords and tiny detection backbones.

`write_coco_tfrecord` writes Model Garden's detection tf.Example format (the one
`official/vision/data/create_coco_tf_record.py` writes and `TfExampleDecoder` reads: encoded image,
source id, normalised boxes, classes, is_crowd, PNG instance masks) with Model Garden's own
`TfExampleBuilder` and `tfexample_utils.dump_to_tfrecord`.

`register_tiny_backbones` adds test-only specs to `specs.MODELS`: each paper detection backbone
shrunk (one block per stage, R101's deeper stage 3 kept deeper, 8 base channels) with its stage
types, stem, attention kind, block / halo size and SE kept, so the real code path runs in seconds.
"""
import dataclasses
from typing import Dict, Sequence

import numpy as np

import official_halonet  # noqa: F401  (selects Keras 2 before TensorFlow is imported)

from official.vision.data import tf_example_builder
from official.vision.dataloaders import tfexample_utils
from official.vision.evaluation import coco_utils
from official_halonet.models import specs

# test name -> (paper backbone, blocks per stage of the tiny version)
TINY_BACKBONES: Dict[str, tuple] = {
    "test_tiny_resnet50_se_halo_b8": ("resnet50_se_halo_b8", (1, 1, 1, 1)),
    "test_tiny_resnet50_se_halo_b32": ("resnet50_se_halo_b32", (1, 1, 1, 1)),
    "test_tiny_resnet101_se_halo_b8": ("resnet101_se_halo_b8", (1, 1, 2, 1)),
    "test_tiny_sasa_resnet50": ("sasa_resnet50", (1, 1, 1, 1)),
    "test_tiny_sasa_resnet50_attention_stem": ("sasa_resnet50_attention_stem", (1, 1, 1, 1)),
}


def tiny_spec(name: str) -> specs.ModelSpec:
  """The tiny version of a paper detection backbone (see TINY_BACKBONES)."""
  paper, blocks = TINY_BACKBONES[name]
  spec = specs.get_spec(paper)
  heads = dict(head_dim=4) if spec.head_dim else dict(num_heads=(2, 2, 2, 2))
  return dataclasses.replace(spec, blocks=blocks, base_width=8, stem_width=8, **heads)


def register_tiny_backbones() -> Sequence[str]:
  """Registers the TINY_BACKBONES specs in specs.MODELS (idempotent); returns their names."""
  for name in TINY_BACKBONES:
    specs.MODELS[name] = tiny_spec(name)
  return tuple(TINY_BACKBONES)


def unregister_tiny_backbones() -> None:
  """Removes them again, so other tests see only the published models."""
  for name in TINY_BACKBONES:
    specs.MODELS.pop(name, None)


def detection_example(index: int, height: int, width: int, num_instances: int,
                      num_classes: int, rng: np.random.Generator):
  """One COCO-format tf.train.Example: a noise image with `num_instances` filled boxes + masks."""
  image = rng.integers(0, 64, size=(height, width, 3), dtype=np.uint8)
  masks = np.zeros((num_instances, height, width), dtype=np.uint8)
  ymins, xmins, ymaxs, xmaxs, classes = [], [], [], [], []
  for i in range(num_instances):
    box_h = int(rng.integers(height // 4, height // 2 + 1))
    box_w = int(rng.integers(width // 4, width // 2 + 1))
    top = int(rng.integers(0, height - box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    label = 1 + (index + i) % (num_classes - 1)  # 0 is background
    image[top:top + box_h, left:left + box_w] = 64 + 60 * (label % 3), 255 - 40 * label, 128
    masks[i, top:top + box_h, left:left + box_w] = 1
    ymins.append(top / height)
    xmins.append(left / width)
    ymaxs.append((top + box_h) / height)
    xmaxs.append((left + box_w) / width)
    classes.append(label)
  return (tf_example_builder.TfExampleBuilder()
          .add_image_matrix_feature(image, image_format="JPEG",
                                    image_source_id=str(1000 + index).encode())
          .add_boxes_feature(xmins, xmaxs, ymins, ymaxs, classes)
          .add_ints_feature("image/object/is_crowd", [0] * num_instances)
          .add_instance_mask_matrices_feature(masks)
          .example)


def write_coco_tfrecord(path: str, num_examples: int = 2, height: int = 96, width: int = 112,
                        num_instances: int = 2, num_classes: int = 4, seed: int = 0) -> str:
  """Writes `num_examples` COCO-format detection examples (unique source ids) to `path`."""
  rng = np.random.default_rng(seed)
  examples = [detection_example(i, height, width, num_instances, num_classes, rng)
              for i in range(num_examples)]
  tfexample_utils.dump_to_tfrecord(path, examples)
  return path


def write_coco_annotations(record_path: str, json_path: str, num_examples: int) -> str:
  """The records' COCO instances JSON (boxes and masks), by Model Garden's ground-truth scanner."""
  coco_utils.scan_and_generator_annotation_file(
      record_path, "tfrecord", num_examples, include_mask=True, annotation_file=json_path)
  return json_path
