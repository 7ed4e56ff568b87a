"""Strict reading of Model Garden trainer checkpoints into a classification model.

Model Garden's trainer writes `tf.train.Checkpoint(global_step=..., model=model,
optimizer=optimizer, **model.checkpoint_items)`; for a `ClassificationModel` the checkpoint items are
`{'backbone': model.backbone}`, so backbone variables are stored under `backbone/...` and the
classifier under `model/...`. A checkpoint written as `tf.train.Checkpoint(model=model)` (Model
Garden's export) or `tf.train.Checkpoint(backbone=backbone)` is read as well: every layout is
tried and the one that names the most of the model's variables is used.

`tf.train.Checkpoint.read(...).expect_partial()` restores whatever matches and skips the rest, so a
checkpoint of another model (other class count, block / halo size, model) can be restored half-way
without a word. `match(model, path)` instead pairs every model variable with its checkpoint key and
shape up front, so callers can refuse a mismatch before assigning anything, and
`describe_mismatch` says which setting differs.

EMA. With `ema_decay` set, Model Garden's optimizer is `ExponentialMovingAverage`, which keeps the
averaged weights as an optimizer slot named 'average' of every model variable; the trainer
checkpoints them next to the raw weights, under `<variable key>/.OPTIMIZER_SLOT/optimizer/average`.
(Model Garden's `EMACheckpointing` eval action also writes swapped-in average weights to
model_dir/ema_checkpoints, but only after evaluations; the slots are in every checkpoint, so they are
read from there.) `CheckpointMatch.value(entry, use_ema=True)` returns the average where the
checkpoint has one.

Which checkpoint (`choose`): 'latest' (model_dir's newest), 'best' (Model Garden's
BestCheckpointExporter keeps the best-evaluated one in model_dir/<best_checkpoint_export_subdir>
with info.json holding its step and eval metrics) or a path. The best checkpoint is written in
the middle of an evaluation, while an EMA run's averages are swapped into the model's variables
(and the raw weights into the 'average' slots): its model variables are the evaluated weights
(`is_best_checkpoint`). `evaluated_metric` finds what a checkpoint's step scored, from info.json
or the run's eval summaries.
"""
import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from official.core import train_utils
from official_halonet.checkpoints import run_files
from official_halonet.layers import relative_position

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
EMA_SLOT_SUFFIX = "/.OPTIMIZER_SLOT/optimizer/average/.ATTRIBUTES/VARIABLE_VALUE"
_MODEL_PREFIXES = ("model/", "backbone/")
GLOBAL_STEP_KEY = "global_step" + VALUE_SUFFIX
LATEST, BEST = "latest", "best"


class CheckpointMismatchError(ValueError):
  """A checkpoint whose variables do not fit the model; the message lists the differences."""


def resolve_checkpoint(path: str) -> str:
  """A checkpoint directory (its latest checkpoint) or prefix -> the prefix; clear error if none."""
  if not path:
    raise FileNotFoundError("no checkpoint path given")
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise FileNotFoundError(f"no checkpoint in {path} (no 'checkpoint' file naming one)")
    return latest
  if not tf.io.gfile.exists(path + ".index"):
    raise FileNotFoundError(f"checkpoint {path} not found (no {path}.index)")
  return path


def choose(model_dir: str, choice: str, best_subdir: str) -> str:
  """--checkpoint ('' or 'latest', 'best', or a directory / prefix) -> what `match` reads.

  Raises FileNotFoundError naming what is missing.
  """
  if choice not in ("", LATEST, BEST):
    return choice
  if not model_dir:
    raise FileNotFoundError(f"--checkpoint={choice or LATEST} needs --model_dir (the run's "
                            f"checkpoints)")
  if choice != BEST:
    return model_dir
  if not best_subdir:
    raise FileNotFoundError("--checkpoint=best: this run keeps no best checkpoint "
                            "(trainer.best_checkpoint_export_subdir is empty, as for multi-label "
                            "runs); use --checkpoint=latest or a path")
  best_dir = os.path.join(model_dir, best_subdir)
  if tf.train.latest_checkpoint(best_dir) is None:
    raise FileNotFoundError(f"--checkpoint=best: no best checkpoint in {best_dir} (a "
                            f"train_and_eval run writes one at its first evaluation)")
  return best_dir


def is_best_checkpoint(path: str) -> bool:
  """True for a checkpoint Model Garden's BestCheckpointExporter wrote (model_dir/best_ckpt)."""
  return os.path.basename(path).startswith(train_utils.BEST_CHECKPOINT_NAME + "-")


def _summary_value(summary_dir: str, tag: str, step: int) -> Optional[float]:
  """The scalar `tag` written at `step` in the event files of `summary_dir` (last one wins)."""
  found = None
  for path in sorted(tf.io.gfile.glob(os.path.join(summary_dir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      if event.step != step:
        continue
      for value in event.summary.value:
        if value.tag == tag:
          found = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
              else float(value.simple_value)
  return found


def evaluated_metric(model_dir: str, step: Optional[int], metric: str, best_subdir: str,
                     summary_subdir: str) -> Optional[float]:
  """`metric` (e.g. 'accuracy') of the evaluation at `step`: from the best checkpoint's info.json
  when it is that step's, else from the eval summaries in model_dir/summary_subdir; None if the
  run did not evaluate at `step`."""
  if not model_dir or step is None or not metric:
    return None
  record = run_files.best_checkpoint_record(model_dir, best_subdir)
  if record is not None and int(record.get("best_ckpt_global_step", -1)) == step \
      and metric in record:
    return float(record[metric])
  summary_dir = os.path.join(model_dir, summary_subdir)
  return _summary_value(summary_dir, metric, step) if tf.io.gfile.isdir(summary_dir) else None


def _escape(name: str) -> str:
  """Checkpoint keys escape '.' and '/' inside a local name (as TensorFlow's saver does)."""
  return name.replace(".", "..").replace("/", ".S")


def variable_keys(**items) -> List[Tuple[str, tf.Variable]]:
  """(checkpoint key, variable) for every variable reachable from tf.train.Checkpoint(**items).

  Keys are what the saver writes: the first path to the variable in breadth-first order over the
  object graph (the saver's own rule), e.g. 'backbone/layer_with_weights-13/rel_pos_h'.
  """
  root = tf.train.Checkpoint(**items)
  seen = {id(root)}
  queue = [(root, "")]
  found = []
  while queue:
    obj, prefix = queue.pop(0)
    for name, child in tf.train.TrackableView.children(obj).items():
      if id(child) in seen:
        continue
      seen.add(id(child))
      path = f"{prefix}{_escape(name)}"
      if isinstance(child, tf.Variable):
        found.append((path + VALUE_SUFFIX, child))
      else:
        queue.append((child, path + "/"))
  return found


@dataclasses.dataclass
class Entry:
  """One model variable and what the checkpoint holds for it."""
  variable: tf.Variable
  name: str  # the variable's name, e.g. 'stage2_block1_halo/rel_pos_h:0'
  key: str  # checkpoint key
  model_shape: Tuple[int, ...]
  checkpoint_shape: Optional[Tuple[int, ...]]  # None: not in the checkpoint
  in_backbone: bool

  @property
  def matches(self) -> bool:
    return self.checkpoint_shape == self.model_shape

  @property
  def is_rel_pos_table(self) -> bool:
    return self.name.split(":")[0].split("/")[-1] in relative_position.TABLE_NAMES


@dataclasses.dataclass
class CheckpointMatch:
  """The pairing of a model's variables with a checkpoint's."""
  path: str
  layout: str
  entries: List[Entry]
  unused_keys: List[str]  # model / backbone variables of the checkpoint no model variable reads
  has_ema: bool
  reader: "tf.train.CheckpointReader"
  shapes: Dict[str, List[int]]

  def value(self, entry: Entry, use_ema: bool = False) -> np.ndarray:
    """The stored value of `entry` (its EMA average when use_ema and the checkpoint has one)."""
    if use_ema:
      slot = entry.key[: -len(VALUE_SUFFIX)] + EMA_SLOT_SUFFIX
      if slot in self.shapes:
        return self.reader.get_tensor(slot)
    return self.reader.get_tensor(entry.key)

  @property
  def step(self) -> Optional[int]:
    """The trainer's global step stored in the checkpoint (else the prefix's number), or None."""
    if GLOBAL_STEP_KEY in self.shapes:
      return int(self.reader.get_tensor(GLOBAL_STEP_KEY))
    suffix = self.path.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else None

  def mismatched(self, entries: Optional[Sequence[Entry]] = None) -> List[Entry]:
    return [e for e in (self.entries if entries is None else entries) if not e.matches]


def _layouts(model) -> Dict[str, Dict[str, object]]:
  backbone = getattr(model, "backbone", None)
  items = dict(getattr(model, "checkpoint_items", {}) or {})
  layouts = {"trainer": dict(model=model, **items), "model": dict(model=model)}
  if backbone is not None:
    layouts["backbone"] = dict(backbone=backbone)
  return layouts


def match(model: tf.Module, checkpoint_path: str) -> CheckpointMatch:
  """Pairs every variable of `model` with its key and shape in the checkpoint (read nothing yet)."""
  path = resolve_checkpoint(checkpoint_path)
  reader = tf.train.load_checkpoint(path)
  shapes = reader.get_variable_to_shape_map()
  backbone = getattr(model, "backbone", None)
  backbone_ids = {id(v) for v in backbone.variables} if backbone is not None else set()
  best = None
  for layout, items in _layouts(model).items():
    keys = variable_keys(**items)
    hits = sum(key in shapes for key, _ in keys)
    if best is None or hits > best[0]:
      best = (hits, layout, keys)
  _, layout, keys = best
  by_id = {id(v): key for key, v in keys}
  entries = []
  for variable in model.variables:
    key = by_id.get(id(variable))
    if key is None:  # the layout covers only the backbone; the rest is not in this checkpoint
      key = f"(not in the '{layout}' layout)/{variable.name}"
    stored = shapes.get(key)
    entries.append(Entry(variable=variable, name=variable.name, key=key,
                         model_shape=tuple(variable.shape.as_list()),
                         checkpoint_shape=None if stored is None else tuple(stored),
                         in_backbone=id(variable) in backbone_ids))
  used = {e.key for e in entries}
  unused = sorted(k for k in shapes if k.endswith(VALUE_SUFFIX) and ".OPTIMIZER_SLOT" not in k
                  and k.startswith(_MODEL_PREFIXES) and k not in used)
  has_ema = any(k.endswith(EMA_SLOT_SUFFIX) for k in shapes)
  return CheckpointMatch(path=path, layout=layout, entries=entries, unused_keys=unused,
                         has_ema=has_ema, reader=reader, shapes=shapes)


def _short(key: str) -> str:
  return key[: -len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key


def _fmt(shape) -> str:
  return "[" + ", ".join(str(d) for d in shape) + "]"


def describe_entry(entry: Entry) -> str:
  """One line naming a mismatched variable, its two shapes and the setting that explains them."""
  name = entry.name.split(":")[0]
  if entry.checkpoint_shape is None:
    return f"{name} ({_short(entry.key)}): in the model {_fmt(entry.model_shape)}, " \
           f"not in the checkpoint"
  line = (f"{name} ({_short(entry.key)}): model {_fmt(entry.model_shape)}, checkpoint "
          f"{_fmt(entry.checkpoint_shape)}")
  if not entry.in_backbone and len(entry.model_shape) in (1, 2) and \
      len(entry.checkpoint_shape) == len(entry.model_shape):
    line += (f" -- the classifier: the checkpoint has {entry.checkpoint_shape[-1]} classes, the "
             f"config {entry.model_shape[-1]} (experiment.num_classes)")
  elif entry.is_rel_pos_table and len(entry.checkpoint_shape) == 2:
    old_w, new_w = (entry.checkpoint_shape[0] + 1) // 2, (entry.model_shape[0] + 1) // 2
    line += (f" -- relative-position table of 2(b+2h)-1 rows: attention window b+2h = {old_w} "
             f"in the checkpoint, {new_w} in the config (experiment.block_size / halo_size)")
    if entry.checkpoint_shape[1] != entry.model_shape[1]:
      line += "; the head width differs too (another model_id?)"
  return line


def describe_mismatch(match_: CheckpointMatch, entries: Sequence[Entry], limit: int = 12) -> str:
  """A multi-line description of the mismatched `entries` and unused checkpoint variables."""
  missing = [e for e in entries if e.checkpoint_shape is None]
  differing = [e for e in entries if e.checkpoint_shape is not None and not e.matches]
  lines = []
  for entry in differing[:limit]:
    lines.append("  " + describe_entry(entry))
  if len(differing) > limit:
    lines.append(f"  ... and {len(differing) - limit} more variables of other shapes")
  if missing:
    lines.append(f"  {len(missing)} of the model's {len(match_.entries)} variables are not in the "
                 f"checkpoint (another model_id?), e.g.:")
    lines.extend("    " + describe_entry(e) for e in missing[:4])
  if match_.unused_keys:
    lines.append(f"  {len(match_.unused_keys)} model variables of the checkpoint are not in the "
                 f"model (another model_id?), e.g.: "
                 + ", ".join(_short(k) for k in match_.unused_keys[:4]))
  return "\n".join(lines)
