"""Scan TFRecord shards before training: truncation, labels, and (optionally) every image.

    python -m official_halonet.data.validate --input_path='/data/imagenet/train-*' \
        --label_offset=1 --num_classes=1000 [--decode_images] [--num_workers=16]

For every shard: the number of records, the smallest and largest stored label, the records
whose label is outside [label_offset, label_offset + num_classes) or missing, records that are
not tf.Examples, and (with --decode_images) records whose image does not decode. A truncated or
corrupt shard is reported with the index of the first record that cannot be read. Exit status 1
if anything is wrong. Labels are parsed in Python (protobuf) record by record, so a problem is
always attributed to its shard and record index; label-only scans read at disk speed.

`eval_num_batches(counts, ...)` turns the per-shard counts into the `DataConfig.eval_num_batches`
that lets every host of a multi-host eval run the same number of steps.
"""
import argparse
import concurrent.futures
import dataclasses
import math
import sys
from typing import List, Optional, Sequence

import tensorflow as tf

from official_halonet.data import images
from official_halonet.data import records


class DataValidationError(ValueError):
  """A data problem, with the shard path and record index in the message."""


@dataclasses.dataclass
class ShardReport:
  """What `validate_shard` found in one shard.

  problems: (record index, description) pairs, at most `max_problems` of them (the count of all
    problems is `num_problems`). A truncated shard has one problem at the first unreadable index.
  """
  path: str
  num_records: int = 0
  label_min: Optional[int] = None
  label_max: Optional[int] = None
  problems: List[tuple] = dataclasses.field(default_factory=list)
  num_problems: int = 0
  truncated: bool = False

  @property
  def ok(self) -> bool:
    return self.num_problems == 0

  def add_problem(self, index: int, description: str, max_problems: int) -> None:
    self.num_problems += 1
    if len(self.problems) < max_problems:
      self.problems.append((index, description))

  def describe(self) -> List[str]:
    return [f'{self.path}: record {i}: {d}' for i, d in self.problems]


def _labels_of(example: tf.train.Example, label_key: str) -> Optional[List[int]]:
  feature = example.features.feature.get(label_key)
  if feature is None:
    return None
  return list(feature.int64_list.value)


def validate_shard(path: str, label_offset: int, num_classes: int,
                   image_key: str = records.IMAGE_KEY, label_key: str = records.LABEL_KEY,
                   is_multilabel: bool = False, decode_images: bool = False,
                   max_problems: int = 20) -> ShardReport:
  """Reads one shard record by record and reports every problem with its record index."""
  report = ShardReport(path=path)
  low, high = label_offset, label_offset + num_classes
  iterator = iter(tf.data.TFRecordDataset(path))
  index = 0
  while True:
    try:
      serialized = next(iterator).numpy()
    except StopIteration:
      break
    except tf.errors.DataLossError as e:
      report.truncated = True
      report.add_problem(index, f'truncated or corrupt shard: this record cannot be read '
                         f'({index} records before it are fine; TensorFlow: '
                         f'{e.message.strip()})', max_problems)
      break
    report.num_records += 1
    try:
      example = tf.train.Example.FromString(serialized)
    except Exception as e:  # pylint: disable=broad-except
      report.add_problem(index, f'not a tf.train.Example ({type(e).__name__}: {e})',
                         max_problems)
      index += 1
      continue
    labels = _labels_of(example, label_key)
    if not labels:
      report.add_problem(index, f'no {label_key!r} label', max_problems)
    else:
      if len(labels) > 1 and not is_multilabel:
        report.add_problem(index, f'{len(labels)} labels {labels[:5]} but is_multilabel is off',
                           max_problems)
      report.label_min = min(labels + ([report.label_min] if report.label_min is not None else []))
      report.label_max = max(labels + ([report.label_max] if report.label_max is not None else []))
      bad = [l for l in labels if not low <= l < high]
      if bad:
        report.add_problem(index, f'label {bad[0]} outside [{low}, {high}) '
                           f'(label_offset={label_offset}, num_classes={num_classes})',
                           max_problems)
    image_feature = example.features.feature.get(image_key)
    image_bytes = image_feature.bytes_list.value[0] if (
        image_feature is not None and image_feature.bytes_list.value) else b''
    if not image_bytes:
      report.add_problem(index, f'no {image_key!r} image bytes', max_problems)
    elif decode_images:
      try:
        images.decode_rgb(tf.constant(image_bytes))  # what training, eval and serving decode
      except tf.errors.InvalidArgumentError as e:
        reason = images.describe_undecodable(tf.constant(image_bytes)).numpy().decode()
        report.add_problem(index, f'image does not decode: {reason}: '
                           f'{e.message.strip()[:200]}', max_problems)
    index += 1
  return report


def validate_shards(paths: Sequence[str], label_offset: int, num_classes: int,
                    num_workers: int = 8, **kwargs) -> List[ShardReport]:
  """`validate_shard` over `paths` in parallel threads; reports in `paths` order."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
    return list(pool.map(
        lambda p: validate_shard(p, label_offset, num_classes, **kwargs), paths))


def raise_for_problems(reports: Sequence[ShardReport], limit: int = 20) -> None:
  """Raises DataValidationError listing (shard, record, problem) if any report has problems."""
  lines = [line for r in reports for line in r.describe()]
  total = sum(r.num_problems for r in reports)
  if total:
    raise DataValidationError(f'{total} data problem(s):\n' + '\n'.join(lines[:limit]) + (
        f'\n... and {total - limit} more' if total > limit else ''))


def eval_num_batches(counts: Sequence[int], num_input_pipelines: int,
                     per_replica_batch_size: int) -> int:
  """Eval batches the busiest input pipeline needs, for `DataConfig.eval_num_batches`.

  Mirrors Model Garden's eval sharding: with at least as many files as pipelines, pipeline i
  reads files i, i + n, ...; otherwise every pipeline reads all files and keeps records
  i, i + n, ... `counts` are the record counts of the files in input order.
  """
  n = num_input_pipelines
  if n < 1 or per_replica_batch_size < 1:
    raise ValueError('num_input_pipelines and per_replica_batch_size must be >= 1.')
  if len(counts) >= n and len(counts) > 1:
    per_pipeline = [sum(counts[i::n]) for i in range(n)]
  else:
    total = sum(counts)
    per_pipeline = [len(range(i, total, n)) for i in range(n)]
  return max(1, max(math.ceil(c / per_replica_batch_size) for c in per_pipeline))


def _parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m official_halonet.data.validate',
      description='Scan TFRecord shards for truncation, bad labels and undecodable images.')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--input_path', help='File pattern(s), comma-separated.')
  source.add_argument('--tfds_name', help='A prepared TFDS dataset, e.g. imagenet2012.')
  parser.add_argument('--tfds_split', default='train')
  parser.add_argument('--tfds_data_dir', default='')
  parser.add_argument('--label_offset', type=int, required=True,
                      help='1 for ImageNet-converter TFRecords, 0 for TFDS / 0-based labels.')
  parser.add_argument('--num_classes', type=int, required=True)
  parser.add_argument('--image_key', default=None)
  parser.add_argument('--label_key', default=None)
  parser.add_argument('--multilabel', action='store_true')
  parser.add_argument('--decode_images', action='store_true',
                      help='Also decode every image (slower: CPU-bound).')
  parser.add_argument('--num_workers', type=int, default=8)
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parse_args(argv)
  from official_halonet.data import pipeline  # pylint: disable=g-import-not-at-top
  if args.tfds_name:
    paths = pipeline.resolve_tfds_files(args.tfds_name, args.tfds_split, args.tfds_data_dir)
    image_key, label_key = records.TFDS_IMAGE_KEY, records.TFDS_LABEL_KEY
  else:
    paths = []
    for pattern in args.input_path.split(','):
      if pattern.strip():
        paths.extend(sorted(tf.io.gfile.glob(pattern.strip())))
    if not paths:
      print(f'No files match {args.input_path!r}.', file=sys.stderr)
      return 1
    image_key, label_key = records.IMAGE_KEY, records.LABEL_KEY
  reports = validate_shards(
      paths, args.label_offset, args.num_classes, num_workers=args.num_workers,
      image_key=args.image_key or image_key, label_key=args.label_key or label_key,
      is_multilabel=args.multilabel, decode_images=args.decode_images)
  total = sum(r.num_records for r in reports)
  mins = [r.label_min for r in reports if r.label_min is not None]
  maxs = [r.label_max for r in reports if r.label_max is not None]
  for r in reports:
    status = 'ok' if r.ok else f'{r.num_problems} problem(s)'
    print(f'{r.path}: {r.num_records} records, labels {r.label_min}..{r.label_max}, {status}')
    for line in r.describe():
      print('  ' + line)
  print(f'{len(reports)} shards, {total} records, stored labels '
        f'{min(mins) if mins else None}..{max(maxs) if maxs else None} '
        f'(expected {args.label_offset}..{args.label_offset + args.num_classes - 1}).')
  bad = sum(r.num_problems for r in reports)
  if bad:
    print(f'FAILED: {bad} problem(s).')
    return 1
  print('OK')
  return 0


if __name__ == '__main__':
  sys.exit(main())
