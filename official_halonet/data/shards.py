"""Reading TFRecord shards so every record carries where it came from.

Each record becomes a dict

  {'source': string scalar, the shard path,
   'index':  int64 scalar, the record's 0-based position in that shard,
   'serialized': string scalar, the serialized tf.Example}

so that later checks (label range, image decoding) can name the shard and record of a bad
example. A truncated or corrupt shard (TensorFlow raises DataLossError "truncated record at
<byte offset>" without the file name) is detected by comparing the bytes the readable records
used with the file size, and stops with an InvalidArgumentError naming the shard and the index
of the first unreadable record.
"""
import concurrent.futures
from typing import Dict, Optional, Sequence, Union

import tensorflow as tf

from official_halonet.data import records

SOURCE = 'source'
INDEX = 'index'
SERIALIZED = 'serialized'
# Read buffer per open shard (TFRecordDataset's default is 256 KiB).
_READ_BUFFER_BYTES = 8 * 1024 * 1024


def shard_sizes(paths: Sequence[str], num_threads: int = 16) -> Dict[str, int]:
  """File sizes in bytes by path (tf.io.gfile, so gs:// works), stat-ed in parallel."""
  paths = list(paths)
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
    sizes = list(pool.map(lambda p: tf.io.gfile.stat(p).length, paths))
  return dict(zip(paths, sizes))


class ShardReader:
  """Builds `dataset_fn`s for Model Garden's `InputReader` that tag records with provenance.

  Model Garden calls `dataset_fn` either with one shard path (a string tensor, inside its
  file-level interleave) or with the whole Python list of paths (when there are fewer files than
  input pipelines); both are handled, the list in file order.
  """

  def __init__(self, sizes: Optional[Dict[str, int]] = None):
    """`sizes`: file sizes by path; when given, shards are checked for truncation."""
    self._table = None
    if sizes:
      keys = tf.constant(list(sizes.keys()), tf.string)
      values = tf.constant(list(sizes.values()), tf.int64)
      self._table = tf.lookup.StaticHashTable(
          tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1)

  def __call__(self, paths: Union[str, Sequence[str], tf.Tensor]) -> tf.data.Dataset:
    if isinstance(paths, (list, tuple)):
      return tf.data.Dataset.from_tensor_slices(list(paths)).flat_map(self.read_shard)
    paths = tf.convert_to_tensor(paths, tf.string)
    if paths.shape.rank == 0:
      return self.read_shard(paths)
    return tf.data.Dataset.from_tensor_slices(paths).flat_map(self.read_shard)

  def read_shard(self, path: tf.Tensor) -> tf.data.Dataset:
    """The records of one shard, in file order, as provenance dicts (see module doc)."""
    path = tf.convert_to_tensor(path, tf.string)
    tagged = tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES).enumerate()
    if self._table is None:
      return tagged.map(lambda i, s: {SOURCE: path, INDEX: i, SERIALIZED: s})

    expected_size = self._table.lookup(path)
    # Stop quietly at an unreadable record, then check below that nothing was lost.
    tagged = tagged.ignore_errors().map(lambda i, s: (i, s, False))
    end_marker = tf.data.Dataset.from_tensors(
        (tf.constant(-1, tf.int64), tf.constant(''), True))

    def count_bytes(state, element):
      used, count = state
      index, serialized, is_end = element
      record_bytes = tf.cast(tf.strings.length(serialized), tf.int64) + (
          records.RECORD_FRAMING_BYTES)
      used = tf.where(is_end, used, used + record_bytes)
      count = tf.where(is_end, count, count + 1)
      return (used, count), (index, serialized, is_end, used, count)

    def check_end(index, serialized, is_end, used, count):
      complete = tf.logical_or(
          tf.logical_not(is_end),
          tf.logical_or(expected_size < 0, tf.equal(used, expected_size)))
      assert_op = tf.debugging.Assert(complete, [
          'Truncated or corrupt TFRecord shard', path, ': record index', count,
          'cannot be read (records 0 ..', count - 1, 'read,', used, 'of', expected_size,
          'bytes). Re-create or remove this shard; `python -m official_halonet.data.validate` '
          'scans all shards.'], summarize=8)
      with tf.control_dependencies([assert_op]):
        is_end = tf.identity(is_end)
      return {SOURCE: path, INDEX: index, SERIALIZED: serialized, 'is_end': is_end}

    checked = tagged.concatenate(end_marker).scan(
        (tf.constant(0, tf.int64), tf.constant(0, tf.int64)), count_bytes).map(check_end)
    return checked.filter(lambda e: tf.logical_not(e['is_end'])).map(
        lambda e: {SOURCE: e[SOURCE], INDEX: e[INDEX], SERIALIZED: e[SERIALIZED]})
