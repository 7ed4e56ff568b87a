"""tpu_check's stand-in for a run's check of the fused kernel on the chip (training/fused_check.py).

A TPU run tries each distinct fused layer shape on the chip before the first step and sends a
shape whose kernel does not compile back to XLA's path. tpu_check has no chip, so it asks the same
question of the compiler: for each shape (fused_check.layer_shapes), the layer's train computation
(its output and the gradients of its input and weights, with the kernel on 'tpu') is compiled for
the slice's generation at each per-device batch of the steps (the batch does not change the
kernel's grid step, but it can change whether the compiler leaves the kernel room). A shape the
compiler refuses, for instance one whose call needs more scoped VMEM than the compiler gives it,
keeps XLA's path in the steps tpu_check traces, as it would in the run, and the report names it
with the compiler's reason. What only running shows (a kernel that compiles and computes wrongly)
is left to the run's check on the chip. Answers are cached per host, as the run's verdicts are.
"""
import hashlib
import json
import os
import re
from typing import Callable, Dict, List, Sequence, Tuple

import tensorflow as tf
import tf_keras

from official_halonet.kernels import library
from official_halonet.kernels import tpu_software
from official_halonet.layers import HaloAttention
from official_halonet.tpu import chips
from official_halonet.tpu import compiler
from official_halonet.tpu import report as report_lib
from official_halonet.training import fused_check


def _train_hlo(layer: HaloAttention, batch: int) -> bytes:
  """The serialized HLO of `layer`'s forward and gradients on `batch` images of its input size,
  with the kernel on 'tpu' (a twin of `layer`, its own weights: the compile does not read them)."""
  shape = [batch] + tf.TensorShape(layer.input_shape).as_list()[1:]
  twin = type(layer).from_config({**layer.get_config(), "fused_attention": "tpu"})
  twin.build(shape)

  def step(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(tf.cast(twin(x), tf.float32))
    return [loss] + tape.gradient(loss, [x] + twin.trainable_variables)

  spec = tf.TensorSpec(shape, tf.float32)
  function = tf.function(step, jit_compile=True, autograph=False)
  return function.experimental_get_compiler_ir(spec)(stage="hlo_serialized")


def _cause(result: Dict) -> str:
  """The compiler's refusal in a line: for scoped VMEM, what the kernel's call asked of what."""
  error = report_lib.step_report("train", 0, result).error
  scoped = re.search(r"Scoped allocation with size (\S+) and limit (\S+)", error)
  return (f"its call needs {scoped.group(1)} of scoped VMEM, over the compiler's "
          f"{scoped.group(2)}" if scoped else error)


def answer_dir() -> str:
  """Where this host keeps the compiler's answers: beside the kernel modules."""
  return os.path.join(library.cache_dir(), "compile_checks")


def _refusal(key: str, layer: HaloAttention, batch: int, generation: chips.Generation) -> str:
  """'' when the compiler takes `layer`'s kernel at `batch` per device, else why not; cached per
  host beside the run's verdicts (keyed by the shape, batch, chip, versions and kernel sources)."""
  path = os.path.join(answer_dir(), hashlib.sha256(json.dumps(
      [key, batch, generation.device_kind, tf.__version__, tpu_software.installed("libtpu"),
       library.sources_digest()]).encode()).hexdigest()[:32] + ".json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)["cause"]
  try:
    result = compiler.compile_for(_train_hlo(layer, batch), generation)
  except (tf.errors.OpError, ValueError, RuntimeError) as e:
    result = {"compiled": False, "error": fused_check.first_line(e)}
  cause = "" if result.get("compiled") else f"at {batch} per device: {_cause(result)}"
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"shape": key, "batch": batch, "chip": generation.device_kind, "cause": cause}, f)
  os.replace(path + ".tmp", path)
  return cause


def refused_shapes(model: tf_keras.Model, generation: chips.Generation, batches: Sequence[int],
                   say: Callable[[str], None]) -> Tuple[List[str], Dict[str, str]]:
  """(the shape_keys whose kernel compiles for `generation` at every per-device batch of
  `batches`, {refused shape_key: the compiler's reason}) for `model`'s layers that take the kernel
  by default."""
  trusted, refused = [], {}
  shapes = fused_check.layer_shapes(model)
  if shapes:
    say(f"compiling the fused kernel of {len(shapes)} layer shape(s) for "
        f"{generation.device_kind}, as a run's check on the chip would")
  for key, (layer, _) in shapes.items():
    causes = (_refusal(key, layer, batch, generation) for batch in sorted(set(batches)))
    cause = next(filter(None, causes), "")
    if not cause:
      trusted.append(key)
      continue
    refused[key] = cause
    say(f"the fused kernel for {key} does not compile for {generation.device_kind}: XLA's path, "
        f"as in a run ({refused[key]})")
  return trusted, refused
