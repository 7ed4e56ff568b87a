"""A TPU run's fused attention kernel, tried on the chip before it is trusted.

The kernel is a TPU run's default for every halo layer whose fused_attention is unset
(layers/fused_attention.py). Before the first step, `trusted_kernel` takes each distinct layer
shape of the model that would take it (fused_attention.shape_key: the kernel's grid step, which the
batch does not change), builds that layer twice with the model's weights, once with the kernel and
once with XLA's path, and runs both on the run's per-replica train and eval batches of the layer's
input size on the run's strategy (the batch does not change the grid step, but it can change whether
the compiler leaves the kernel room: the README's TPU section):
the output, and the gradients of the input and of every weight for one random cotangent. A shape
whose kernel fails to export, compile or run, or whose results differ from XLA's by more than
rounding allows, keeps XLA's path, with one warning line naming the shape and the cause. Verdicts
are cached per host ($OFFICIAL_HALONET_KERNEL_CACHE or ~/.cache/official_halonet/kernels, in
checks/, keyed by the shape, the kernel sources and the TensorFlow, JAX and libtpu versions)
and written to model_dir/fused_attention.json. On a pod every host runs this check; the hosts then
agree over the strategy's replicas (`agreed`): a shape takes the kernel only where every host
trusts it, so all hosts build the same program.

How close is close enough. Under mixed_bfloat16 both paths take the same bfloat16 q, k and v and
keep their sums in float32; they differ in where they round to bfloat16 (unit roundoff u = 2^-8):
the kernel rounds scale·q, the position factors, the probabilities and the output, XLA's path the
logits, the probabilities and the output. Each of these four roundings moves an output by at most
u relative to its largest term, and a rounded logit moves its probability by a factor of at most
exp(u·|logit|), within 2u for the |logits| < 1 of a unit-variance input through the initial
weights. Both paths together: 2 · 4 · 2u = 16u = 1/16 of the largest output; the backward pass
runs the chain twice, so the gradients' bound is 1/8 of the largest gradient. In float32 u is
2^-24 and the bounds shrink by 2^16. This is a screen for a kernel that does not compile or
reads the wrong pixels, head or table (differences of the order of the values themselves); the
kernel's numerics are proven on the CPU against the per-pixel reference
(tests/test_fused_attention.py).
"""
import contextlib
import dataclasses
import hashlib
import json
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras

from official_halonet.kernels import library
from official_halonet.kernels import tpu_software
from official_halonet.layers import HaloAttention
from official_halonet.layers import fused_attention as fused_lib

VERDICTS = "fused_attention.json"  # in model_dir
ROUNDINGS = 16  # the forward bound in units of the compute dtype's unit roundoff (docstring)
UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 2.0**-24}


@dataclasses.dataclass
class Verdict:
  """What the check of one shape found."""
  shape: str           # fused_attention.shape_key
  layers: List[str]    # the model's layers of this shape
  trusted: bool
  cause: str = ""      # why not, in one line
  cached: bool = False


def layer_shapes(model: tf_keras.Model) -> Dict[str, Tuple[HaloAttention, List[str]]]:
  """shape_key -> (the first such layer, the names of all) for the model's halo layers that take
  the kernel by default (fused_attention unset, attention the kernel computes, a grid step that
  fits), at their input shape with a batch of one."""
  shapes: Dict[str, Tuple[HaloAttention, List[str]]] = {}
  for layer in model.submodules:
    if not (isinstance(layer, HaloAttention) and layer.fused_attention is None
            and layer.kernel_computes):
      continue
    core = layer.fused_core([1] + tf.TensorShape(layer.input_shape).as_list()[1:])
    dtype = tf.as_dtype(layer.compute_dtype)
    if fused_lib.fits(core, dtype):
      shapes.setdefault(fused_lib.shape_key(core, dtype), (layer, []))[1].append(layer.name)
  return shapes


def _twins(layer: HaloAttention, platform: str) -> Tuple[HaloAttention, HaloAttention]:
  """`layer` with the kernel on `platform` and with XLA's path, both holding its weights."""
  shape = [1] + tf.TensorShape(layer.input_shape).as_list()[1:]
  twins = []
  for setting in (platform, "none"):
    twin = type(layer).from_config({**layer.get_config(), "fused_attention": setting})
    twin.build(shape)
    twin.set_weights(layer.get_weights())
    twins.append(twin)
  return twins[0], twins[1]


def _results(layer: HaloAttention, x: tf.Tensor, strategy) -> List[np.ndarray]:
  """[output, d input, d weight...] of one replica, for a fixed random cotangent."""
  cotangent = tf.random.stateless_normal(layer.compute_output_shape(x.shape), seed=[7, 1])

  def step(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      out = tf.cast(layer(x), tf.float32)
      loss = tf.reduce_sum(out * cotangent)
    return [out] + tape.gradient(loss, [x] + layer.trainable_variables)

  outputs = tf.function(lambda: strategy.run(step, args=(x,)), autograph=False)()
  return [np.asarray(strategy.experimental_local_results(t)[0], np.float64) for t in outputs]


def compare(got: List[np.ndarray], want: List[np.ndarray], names: List[str], dtype: str) -> str:
  """The first result outside the docstring's bound, in words, or ''."""
  for i, (name, a, b) in enumerate(zip(names, got, want)):
    bound = ROUNDINGS * (1 if i == 0 else 2) * UNIT_ROUNDOFF[dtype]
    scale = float(np.abs(b).max()) if b.size else 0.0
    error = float(np.abs(a - b).max()) if b.size else 0.0
    if not np.isfinite(a).all() or error > bound * scale:
      return (f"{name} differs from XLA's path by {error:.3g}, more than {bound:.3g} of its "
              f"largest value {scale:.3g}")
  return ""


def first_line(error: Exception) -> str:
  """The error's own first line, inside the wrapper Keras puts around a layer's exception."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if lines and lines[0].startswith("Exception encountered when calling layer"):
    lines = lines[1:]
  return lines[0] if lines else type(error).__name__


def check_shape(layer: HaloAttention, platform: str, strategy, batch: int = 1) -> str:
  """'' when the kernel on `platform` computes `layer`'s shape as XLA's path does on `batch`
  images per replica, else why not."""
  shape = [batch] + tf.TensorShape(layer.input_shape).as_list()[1:]
  x = tf.random.stateless_normal(shape, seed=[7, 0])
  try:
    with strategy.scope():
      fused, plain = _twins(layer, platform)
    got, want = _results(fused, x, strategy), _results(plain, x, strategy)
  except (tf.errors.OpError, ValueError, RuntimeError) as e:  # export, compile or run
    return f"the kernel failed: {first_line(e)}"
  names = ["output", "input gradient"] + [f"{v.name} gradient" for v in fused.trainable_variables]
  return compare(got, want, names, tf.as_dtype(fused.compute_dtype).name)


def verdict_dir() -> str:
  """Where this host keeps its verdicts: beside the kernel modules."""
  return os.path.join(library.cache_dir(), "checks")


def _cache_path(key: str, platform: str, batches: Tuple[int, ...]) -> str:
  digest = hashlib.sha256(json.dumps(
      [key, platform, list(batches), tf.__version__, tpu_software.installed("jax"),
       tpu_software.installed("libtpu"), library.sources_digest()]).encode()).hexdigest()[:32]
  return os.path.join(verdict_dir(), f"{digest}.json")


def _verdict(key: str, layer: HaloAttention, names: List[str], platform: str, strategy,
             batches: Tuple[int, ...]) -> Verdict:
  """One shape's verdict at every batch of `batches`, from this host's cache or checked now (and
  cached)."""
  path = _cache_path(key, platform, batches)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      cached = json.load(f)
    return Verdict(key, names, cached["trusted"], cached["cause"], cached=True)
  cause = next(filter(None, (check_shape(layer, platform, strategy, b) for b in batches)), "")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"shape": key, "trusted": not cause, "cause": cause}, f)
  os.replace(path + ".tmp", path)
  return Verdict(key, names, not cause, cause)


def _warn(line: str) -> None:
  print(f"Warning: {line}", flush=True)


def agreed(trusted, strategy) -> List[bool]:
  """Per shape, whether every replica of `strategy` trusts it: `trusted` is one host's list of
  bools (or, per replica, a distributed value of such a float vector, 1 for trusted)."""
  if not isinstance(trusted, tf.distribute.DistributedValues):
    if not trusted:
      return []
    trusted = tf.constant([float(t) for t in trusted])

  def doubts(local):
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                          1.0 - local)

  summed = tf.function(lambda: strategy.run(doubts, args=(trusted,)), autograph=False)()
  return [bool(d == 0) for d in strategy.experimental_local_results(summed)[0].numpy()]


def check_model(model: tf_keras.Model, platform: str, strategy, model_dir: str = "",
                say=_warn, batches: Sequence[int] = (1,)) -> List[Verdict]:
  """Every default-fused shape of `model` checked at each per-replica batch of `batches` (the
  run's train and eval batches: whether the compiler finds the kernel room can depend on the
  batch, README's TPU section) or read from the cache, and agreed between the hosts; verdicts
  written to model_dir/fused_attention.json; one `say` line per shape that keeps XLA's path."""
  batches = tuple(sorted(set(batches)))
  verdicts = [_verdict(key, layer, names, platform, strategy, batches)
              for key, (layer, names) in layer_shapes(model).items()]
  for verdict, everywhere in zip(verdicts, agreed([v.trusted for v in verdicts], strategy)):
    if verdict.trusted and not everywhere:
      verdict.trusted, verdict.cause = False, "another host's check did not trust it"
  for verdict in verdicts:
    if not verdict.trusted:
      say(f"fused attention: {verdict.shape} keeps XLA's path ({len(verdict.layers)} layer(s), "
          f"first {verdict.layers[0]}): {verdict.cause}")
  if model_dir:
    with tf.io.gfile.GFile(os.path.join(model_dir, VERDICTS), "w") as f:
      json.dump({"platform": platform, "shapes": [dataclasses.asdict(v) for v in verdicts]}, f,
                indent=1)
  return verdicts


@contextlib.contextmanager
def trusted_kernel(model: tf_keras.Model, platform: Optional[str], strategy,
                   model_dir: str = "", batches: Sequence[int] = (1,)) -> Iterator[List[Verdict]]:
  """Within it, the model's unset halo layers take the kernel on `platform` for the shapes that
  passed `check_model` at `batches`, XLA's path for the rest; nothing changes when `platform` is
  None."""
  if platform is None:
    yield []
    return
  verdicts = check_model(model, platform, strategy, model_dir, batches=batches)
  with fused_lib.kernel_by_default(platform, [v.shape for v in verdicts if v.trusted]):
    yield verdicts
