"""Data errors as values: which shard, which record, what is wrong.

`DataProblem(shard, record, reason)` is one bad record (record None: the shard as a whole).
`DataError` carries a list of them; callers read `problems`, never the message text.

The input pipeline runs inside TensorFlow, where a bad record can only stop the graph with an
assertion (shards.py: truncated shard; record_labels.py: label out of range;
image_parser.py: undecodable image). TensorFlow wraps that assertion in a long "Graph execution
error ... N root error(s) found" message, one copy per replica. `from_tf_error` finds the
assertion the data layer wrote and turns it back into a `DataError`; any other TensorFlow error
gives None.
"""
import dataclasses
import re
from typing import List, Optional, Sequence

import tensorflow as tf

# tf.debugging.Assert prints its data as "[item] [item] ...": these name the located items.
_SHARD = re.compile(r'\[(?:[^\[\]]*\s)?shard\]? \[([^\[\]]+)\]')
_RECORD = re.compile(r'\[[^\[\]]*record index\]? \[(\d+)\]')
_ASSERTION = re.compile(r'assertion failed: (.*)')


@dataclasses.dataclass(frozen=True)
class DataProblem:
  """One bad record: `shard` path, 0-based `record` index in it (None: whole shard), `reason`.

  A reason recovered from a TensorFlow assertion is its whole sentence, location included.
  """
  shard: str
  record: Optional[int]
  reason: str

  def __str__(self) -> str:
    if self.shard in self.reason:  # TensorFlow-side messages already say where
      return self.reason
    where = self.shard if self.record is None else f'{self.shard}: record {self.record}'
    return f'{where}: {self.reason}'


class DataError(ValueError):
  """Bad input data; `problems` lists (shard, record, reason), `total` counts all of them.

  str(): every listed problem, one per line. `summary()`: one line for a person (the first
  problem and how many more there are).
  """

  def __init__(self, problems: Sequence[DataProblem], total: Optional[int] = None,
               hint: str = ''):
    self.problems: List[DataProblem] = list(problems)
    self.total = len(self.problems) if total is None else total
    self.hint = hint
    more = self.total - len(self.problems)
    super().__init__(f'{self.total} data problem(s):\n' + '\n'.join(map(str, self.problems)) +
                     (f'\n... and {more} more' if more > 0 else ''))

  def summary(self) -> str:
    first = str(self.problems[0]) if self.problems else 'no details'
    more = f' (and {self.total - 1} more problem(s))' if self.total > 1 else ''
    return f'bad data: {first}{more}{"; " + self.hint if self.hint else ""}'


def _flatten(assertion: str) -> str:
  """'[a] [b c] [1]' -> 'a b c 1': the assertion's items as one sentence."""
  text = assertion.strip()
  if text.startswith('['):
    text = text[1:]
  if text.endswith(']'):
    text = text[:-1]
  return re.sub(r'\s+', ' ', text.replace('] [', ' ')).replace(' : ', ': ').strip()


def from_tf_error(error: BaseException) -> Optional[DataError]:
  """The data layer's own problem inside a TensorFlow error, or None if there is none.

  Recognised: an assertion naming a shard and a record index (truncated / corrupt shard, label
  out of range, undecodable image). The reason is the assertion's text, items joined by spaces.
  """
  if not isinstance(error, tf.errors.OpError):
    return None
  for line in (error.message or '').splitlines():
    found = _ASSERTION.search(line)
    if not found:
      continue
    shard, record = _SHARD.search(found.group(1)), _RECORD.search(found.group(1))
    if shard and record:
      reason = _flatten(found.group(1))
      return DataError([DataProblem(shard.group(1), int(record.group(1)), reason)],
                       hint='`python -m official_halonet.data.validate` scans every shard')
  return None
