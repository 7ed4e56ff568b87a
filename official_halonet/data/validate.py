"""Scan TFRecord shards before training: truncation, labels, and (optionally) every image.

    python -m official_halonet.data.validate --input_path='/data/imagenet/train-*' \
        --label_offset=1 --num_classes=1000 [--decode_images] [--num_workers=16]

For every shard: the number of records, the smallest and largest stored label, the records
whose label is outside [label_offset, label_offset + num_classes) or missing, records that are
not tf.Examples, and (with --decode_images) records whose image does not decode. A truncated or
corrupt shard is reported with the index of the first record that cannot be read. Exit status 1
if anything is wrong. Labels are parsed in Python (protobuf) record by record, so a problem is
always attributed to its shard and record index; label-only scans read at disk speed.

`check_eval_data(config)` runs before the first training step of train_and_eval (runner.py):
every eval shard read to the end and every label checked, plus a sample of images decoded.

`eval_num_batches(counts, ...)` turns the per-shard counts into the `DataConfig.eval_num_batches`
that lets every host of a multi-host eval run the same number of steps.
"""
import concurrent.futures
import dataclasses
import math
import sys
import time
from typing import List, Optional, Sequence

from absl import flags
import tensorflow as tf

from official_halonet.data import command_line
from official_halonet.data import errors
from official_halonet.data import images
from official_halonet.data import records


# Raised with every (shard, record, reason) found; see errors.DataError.
DataValidationError = errors.DataError


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


def _check_labels(report: ShardReport, index: int, count: int, low: int, high: int,
                  label_offset: int, num_classes: int, label_key: str, is_multilabel: bool,
                  max_problems: int) -> None:
  """Record `index` has `count` labels, the smallest `low` and the largest `high`."""
  if not count:
    report.add_problem(index, f'no {label_key!r} label', max_problems)
    return
  if count > 1 and not is_multilabel:
    report.add_problem(index, f'{count} labels but is_multilabel is off', max_problems)
  report.label_min = low if report.label_min is None else min(low, report.label_min)
  report.label_max = high if report.label_max is None else max(high, report.label_max)
  end = label_offset + num_classes
  if low < label_offset or high >= end:
    report.add_problem(index, f'label {low if low < label_offset else high} outside '
                       f'[{label_offset}, {end}) (label_offset={label_offset}, '
                       f'num_classes={num_classes})', max_problems)


def validate_shard(path: str, label_offset: int, num_classes: int,
                   image_key: str = records.IMAGE_KEY, label_key: str = records.LABEL_KEY,
                   is_multilabel: bool = False, decode_images: bool = False,
                   max_problems: int = 20, max_records: Optional[int] = None) -> ShardReport:
  """Reads one shard record by record and reports every problem with its record index.

  max_records: stop after this many records (None: read to the end).
  """
  report = ShardReport(path=path)
  iterator = iter(tf.data.TFRecordDataset(path))
  index = 0
  while max_records is None or index < max_records:
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
    labels = _labels_of(example, label_key) or []
    _check_labels(report, index, len(labels), min(labels, default=0), max(labels, default=0),
                  label_offset, num_classes, label_key, is_multilabel, max_problems)
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


# Records parsed per batch by the label-only scan.
_SCAN_BATCH = 1024
# Eval images decoded by `check_eval_data` before training (the first records of every shard).
EVAL_DECODE_SAMPLE = 1024


def scan_labels(paths: Sequence[str], label_offset: int, num_classes: int,
                label_key: str = records.LABEL_KEY, is_multilabel: bool = False,
                num_workers: int = 8, max_problems: int = 20) -> List[ShardReport]:
  """Reads every shard to the end and checks every label; a fast pass that decodes no image.

  One tf.data pipeline reads `num_workers` shards at a time and parses only the label feature,
  _SCAN_BATCH records at a time, so the cost is reading the bytes. If a shard cannot be read to
  the end or holds a record that is not a tf.Example, all shards are scanned again record by
  record (`validate_shards`) for the exact shard and record index. Reports in `paths` order.
  """
  paths = list(paths)

  def labels_of(shard, serialized):
    sparse = tf.io.parse_example(serialized, {label_key: tf.io.VarLenFeature(tf.int64)})
    labels = tf.RaggedTensor.from_sparse(sparse[label_key])
    return (shard, labels.row_lengths(), tf.reduce_min(labels, axis=1),
            tf.reduce_max(labels, axis=1))

  def read(shard):
    return tf.data.TFRecordDataset(tf.gather(paths, shard), buffer_size=8 * 1024 * 1024).batch(
        _SCAN_BATCH).map(lambda serialized: labels_of(shard, serialized))

  dataset = tf.data.Dataset.range(len(paths)).interleave(
      read, cycle_length=max(1, num_workers), num_parallel_calls=max(1, num_workers),
      deterministic=True).prefetch(2)
  reports = [ShardReport(path=p) for p in paths]
  try:
    for shard, counts, lows, highs in dataset.as_numpy_iterator():
      report = reports[shard]
      for i, (count, low, high) in enumerate(zip(counts, lows, highs)):
        if count != 1 or not label_offset <= low < label_offset + num_classes:
          _check_labels(report, report.num_records + i, int(count), int(low), int(high),
                        label_offset, num_classes, label_key, is_multilabel, max_problems)
      present = counts > 0
      if present.any():
        low, high = int(lows[present].min()), int(highs[present].max())
        report.label_min = low if report.label_min is None else min(low, report.label_min)
        report.label_max = high if report.label_max is None else max(high, report.label_max)
      report.num_records += len(counts)
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
    return validate_shards(paths, label_offset, num_classes, num_workers=num_workers,
                           label_key=label_key, is_multilabel=is_multilabel,
                           max_problems=max_problems)
  return reports


@dataclasses.dataclass
class EvalDataSummary:
  """What `check_eval_data` read: shards, records, images decoded, seconds it took."""
  num_shards: int
  num_records: int
  num_decoded: int
  seconds: float

  def __str__(self) -> str:
    return (f'eval data checked before training: {self.num_shards} shard(s) read to the end, '
            f'{self.num_records} labels in range, {self.num_decoded} images decoded '
            f'({self.seconds:.1f} s)')


def check_eval_data(config, decode_sample: int = EVAL_DECODE_SAMPLE,
                    num_workers: int = 8) -> EvalDataSummary:
  """Checks the eval data of a `DataConfig` before any training step; raises DataError.

  Every eval shard is read to the end (record framing and CRCs: a truncated or corrupt shard is
  found) and every label is checked against [label_offset, label_offset + num_classes)
  (`scan_labels`); the first ceil(decode_sample / shards) records of each shard are also decoded
  (`validate_shard`), `num_workers` shards at a time.
  """
  from official_halonet.data import input_files  # pylint: disable=g-import-not-at-top
  start = time.time()
  paths = input_files.resolve_input_files(config)
  image_key, label_key = input_files.field_keys(config)
  per_shard = math.ceil(decode_sample / len(paths)) if decode_sample > 0 else 0
  common = dict(label_offset=config.label_offset, num_classes=config.num_classes,
                label_key=label_key, is_multilabel=config.is_multilabel)

  reports = scan_labels(paths, num_workers=num_workers, **common)

  def decode_sample(report):
    if per_shard and not report.truncated:
      sample = validate_shard(report.path, image_key=image_key, decode_images=True,
                              max_records=per_shard, **common)
      for index, description in sample.problems:
        if (index, description) not in report.problems:
          report.add_problem(index, description, max_problems=20)

  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
    list(pool.map(decode_sample, reports))
  raise_for_problems(reports, hint=f'found in the eval data before training; `python -m '
                     f'official_halonet.data.validate --decode_images` checks every image')
  num_records = sum(r.num_records for r in reports)
  return EvalDataSummary(len(paths), num_records,
                         sum(min(per_shard, r.num_records) for r in reports),
                         time.time() - start)


def raise_for_problems(reports: Sequence[ShardReport], limit: int = 20, hint: str = '') -> None:
  """Raises DataValidationError listing (shard, record, problem) if any report has problems."""
  problems = [errors.DataProblem(r.path, index, reason)
              for r in reports for index, reason in r.problems]
  total = sum(r.num_problems for r in reports)
  if total:
    raise DataValidationError(problems[:limit], total, hint=hint)


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


def _define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string('input_path', None, 'File pattern(s), comma-separated.', flag_values=values)
  flags.DEFINE_string('tfds_name', None, 'A prepared TFDS dataset, e.g. imagenet2012.',
                      flag_values=values)
  flags.mark_flags_as_mutual_exclusive(['input_path', 'tfds_name'], required=True,
                                       flag_values=values)
  flags.DEFINE_string('tfds_split', 'train', 'TFDS split.', flag_values=values)
  flags.DEFINE_string('tfds_data_dir', '', 'TFDS data directory.', flag_values=values)
  flags.DEFINE_integer('label_offset', None,
                       '1 for ImageNet-converter TFRecords, 0 for TFDS / 0-based labels.',
                       flag_values=values)
  flags.DEFINE_integer('num_classes', None, 'Number of classes.', flag_values=values)
  flags.mark_flags_as_required(['label_offset', 'num_classes'], flag_values=values)
  flags.DEFINE_string('image_key', None, 'tf.Example image feature (default: the format\'s).',
                      flag_values=values)
  flags.DEFINE_string('label_key', None, 'tf.Example label feature (default: the format\'s).',
                      flag_values=values)
  flags.DEFINE_bool('multilabel', False, 'Labels are lists of class ids.', flag_values=values)
  flags.DEFINE_bool('decode_images', False, 'Also decode every image (slower: CPU-bound).',
                    flag_values=values)
  flags.DEFINE_integer('num_workers', 8, 'Shards read in parallel.', flag_values=values)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = command_line.parse(
      _define_flags, argv, prog='python -m official_halonet.data.validate',
      description='Scan TFRecord shards for truncation, bad labels and undecodable images.')
  from official_halonet.data import input_files  # pylint: disable=g-import-not-at-top
  if args.tfds_name:
    paths = input_files.resolve_tfds_files(args.tfds_name, args.tfds_split, args.tfds_data_dir)
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
  command_line.run(main, 'validate')
