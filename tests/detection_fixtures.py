"""Helpers for tests/test_detection.py and test_tpu_check.py: COCO-format TFRecords, tiny detection
backbones and small heads.

`write_coco_tfrecord` writes Model Garden's detection tf.Example format (the one
`official/vision/data/create_coco_tf_record.py` writes and `TfExampleDecoder` reads: encoded image,
source id, normalised boxes, classes, is_crowd, PNG instance masks) with Model Garden's own
`TfExampleBuilder` and `tfexample_utils.dump_to_tfrecord`.

`SMALL_HEADS` shrinks each detector's heads; `tiny_overrides` shrinks a paper detection backbone
through the backbone config's shape overrides (HaloNetConfig blocks / base_width / stem_width /
head_dim or num_heads: one block per stage unless told otherwise, 8 base channels), keeping its
stage types, stem, attention kind, block / halo size and SE, so the real code path runs in seconds;
`tiny_spec` is the spec that should build.
"""
import dataclasses
from typing import Any, Dict, Sequence

import numpy as np

import official_halonet  # noqa: F401  (selects Keras 2 before TensorFlow is imported)

from official.vision.data import tf_example_builder
from official.vision.dataloaders import tfexample_utils
from official.vision.evaluation import coco_utils
from official_halonet.models import specs

ONE_BLOCK_PER_STAGE = (1, 1, 1, 1)
# Small heads (Model Garden model-config overrides), so a step takes a second on the CPU: the
# backbone is what is under test.
SMALL_HEADS = {
    "maskrcnn": {
        "decoder": {"fpn": {"num_filters": 16}},
        "rpn_head": {"num_filters": 16},
        "detection_head": {"num_filters": 16, "num_convs": 1, "fc_dims": 32},
        "mask_head": {"num_filters": 16, "num_convs": 1},
        "roi_generator": {"pre_nms_top_k": 256, "num_proposals": 64, "test_pre_nms_top_k": 128,
                          "test_num_proposals": 32},
        "roi_sampler": {"num_sampled_rois": 16},
        "mask_sampler": {"num_sampled_masks": 4},
        "detection_generator": {"max_num_detections": 10}},
    "retinanet": {
        "decoder": {"fpn": {"num_filters": 16}},
        "head": {"num_convs": 1, "num_filters": 16},
        "detection_generator": {"max_num_detections": 10}},
}


def tiny_overrides(backbone: str, blocks: Sequence[int] = ONE_BLOCK_PER_STAGE) -> Dict[str, Any]:
  """HaloNetConfig shape overrides shrinking the paper backbone `backbone` (plain YAML values)."""
  heads = dict(head_dim=4) if specs.get_spec(backbone).head_dim else dict(num_heads=[2, 2, 2, 2])
  return dict(blocks=list(blocks), base_width=8, stem_width=8, **heads)


def tiny_spec(backbone: str, blocks: Sequence[int] = ONE_BLOCK_PER_STAGE) -> specs.ModelSpec:
  """The spec those overrides should build: the named spec with its fields replaced directly."""
  spec = specs.get_spec(backbone)
  heads = dict(head_dim=4) if spec.head_dim else dict(num_heads=(2, 2, 2, 2))
  return dataclasses.replace(spec, blocks=tuple(blocks), base_width=8, stem_width=8, **heads)


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
