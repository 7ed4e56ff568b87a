"""Benchmark: images/second of the training input pipeline (official_halonet.data) on this host.

    python bench/input.py                                   # ImageNet-sized photos, 224 px
    python bench/input.py --image_size 256 --randaug 6      # H0's training input
    python bench/input.py --input_path '/data/imagenet/train-*' --label_offset 1
    python bench/input.py --compare_guard                   # guarded vs unguarded decode

Without --input_path it writes --num_records ImageNet-format records of real photos at their
native sizes (scikit-image's astronaut 512x512, coffee 400x600, chelsea 300x451, rocket 427x640 and
scikit-learn's china / flower 427x640, JPEG quality 90: 40-110 KB, like ImageNet's ~110 KB
average) into --num_shards shards in a temporary directory. The pipeline is the one training
uses: shard interleave, shuffle, label check, Inception random-resized crop, flip, optional
RandAugment, normalisation, batching, prefetch. The first --warmup batches (tracing, buffer
fill) are not timed; then images/second over --batches batches is reported, with the host's CPU
count, since the figure scales with cores. Results go to --out as JSON. Flags are absl's
(official_halonet.data.command_line, like the data tools).
"""
import io
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _write_photo_records(directory, num_records, num_shards):
  """ImageNet-format shards of real photos at native size; returns the file pattern."""
  import numpy as np
  from PIL import Image
  import skimage.data
  import sklearn.datasets
  from official_halonet.data import records
  photos = [getattr(skimage.data, n)() for n in ('astronaut', 'coffee', 'chelsea', 'rocket')]
  photos += list(sklearn.datasets.load_sample_images().images)
  encoded = []
  for photo in photos:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(photo, np.uint8)).save(buffer, 'JPEG', quality=90)
    encoded.append((buffer.getvalue(), photo.shape))
  examples = []
  for k in range(num_records):
    data, shape = encoded[k % len(encoded)]
    examples.append(records.make_example(data, 1 + k % 1000, height=shape[0], width=shape[1]))
  records.write_shards(examples, directory, 'train', num_shards)
  mean_kb = sum(len(d) for d, _ in encoded) / len(encoded) / 1024
  return os.path.join(directory, 'train-*'), mean_kb


def _measure(args, input_path, guard_decode):
  from official_halonet.data import config as config_lib
  from official_halonet.data import pipeline
  config = config_lib.DataConfig(
      input_path=input_path, is_training=True, global_batch_size=args.batch_size,
      image_size=args.image_size, num_classes=args.num_classes, label_offset=args.label_offset,
      randaug_magnitude=args.randaug, shuffle_buffer_size=args.shuffle_buffer,
      guard_decode=guard_decode, dtype=args.dtype)
  dataset = pipeline.build_dataset(config)
  iterator = iter(dataset)
  for _ in range(args.warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(args.batches):
    images, _ = next(iterator)
  _ = images.numpy()
  seconds = time.perf_counter() - start
  return args.batches * args.batch_size / seconds


def _define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_string('input_path', '', 'TFRecord pattern; default: synthetic.',
                      flag_values=values)
  flags.DEFINE_integer('label_offset', 1, 'Stored label of class 0 (ImageNet records: 1).',
                       flag_values=values)
  flags.DEFINE_integer('num_classes', 1000, 'Classes the label check allows.',
                       flag_values=values)
  flags.DEFINE_integer('num_records', 1024, 'Synthetic records to write.', flag_values=values)
  flags.DEFINE_integer('num_shards', 16, 'Synthetic shards to write.', flag_values=values)
  flags.DEFINE_integer('image_size', 224, 'Training crop side in pixels.', flag_values=values)
  flags.DEFINE_integer('batch_size', 64, 'Images per batch.', flag_values=values)
  flags.DEFINE_integer('randaug', 0, 'RandAugment magnitude, 0 = off.', flag_values=values)
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16', 'float16'], 'Image dtype.',
                    flag_values=values)
  flags.DEFINE_integer('shuffle_buffer', 1024, 'Shuffle buffer size.', flag_values=values)
  flags.DEFINE_integer('warmup', 5, 'Untimed batches first.', flag_values=values)
  flags.DEFINE_integer('batches', 30, 'Timed batches.', flag_values=values)
  flags.DEFINE_bool('compare_guard', False, 'Also measure with guard_decode=False.',
                    flag_values=values)
  flags.DEFINE_string('out', '', 'Write the results as JSON here.', flag_values=values)


def main(argv=None):
  from official_halonet.data import command_line
  args = command_line.parse(_define_flags, argv, prog='python bench/input.py',
                            description=__doc__.split('\n\n')[0])

  with tempfile.TemporaryDirectory() as tmp:
    mean_kb = None
    input_path = args.input_path
    if not input_path:
      input_path, mean_kb = _write_photo_records(tmp, args.num_records, args.num_shards)
    results = []
    for guard in ([True, False] if args.compare_guard else [True]):
      rate = _measure(args, input_path, guard)
      results.append(dict(guard_decode=guard, images_per_second=round(rate, 1)))
      print(f'guard_decode={guard}: {rate:.1f} images/s '
            f'(batch {args.batch_size}, {args.image_size} px, RandAugment {args.randaug})')

  report = dict(
      benchmark='input_pipeline_training', host=platform.node(), cpus=os.cpu_count(),
      platform=platform.platform(), input=args.input_path or 'synthetic real photos',
      mean_jpeg_kb=round(mean_kb, 1) if mean_kb else None, image_size=args.image_size,
      batch_size=args.batch_size, randaug_magnitude=args.randaug, dtype=args.dtype,
      warmup_batches=args.warmup, timed_batches=args.batches, results=results)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps(report, indent=1) + '\n')
  return report


if __name__ == '__main__':
  main()
