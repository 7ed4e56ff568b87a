"""Gradient checkpointing that survives XLA: `recompute(fn)(x)`.

`tf.recompute_grad(fn)` keeps only fn's input for the backward pass and calls fn again there. Under
XLA (a TPU step, `jit_compile=True`) the whole step is one program, and the compiler sees the
second call compute exactly what the first did: common-subexpression elimination merges the two,
the forward's intermediates stay alive until the backward pass, and nothing is saved (the TPU
compiler reports the same temporaries and FLOPs with and without it). Here the second call's input
first goes through an XLA optimization barrier, an identity the compiler may not look through, so
the rerun stays a rerun. Outside XLA the barrier is an identity op; results are the same either way.

    y = recompute(layer_forward)(x)    # x: one tensor; y: fn's output, any structure
"""
from typing import Callable

import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla  # the XlaOptimizationBarrier op's wrapper


@tf.custom_gradient
def _barrier(x: tf.Tensor):
  """x behind an XLA optimization barrier; the gradient passes through unchanged (TensorFlow
  registers none for the op)."""
  return xla.optimization_barrier(x)[0], lambda dy: dy


def recompute(fn: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[tf.Tensor], tf.Tensor]:
  """fn, differentiated by rerunning it in the backward pass behind an optimization barrier."""
  runs = []

  def run(x: tf.Tensor):
    if runs:  # tf.recompute_grad's rerun, inside the gradient
      x = _barrier(x)
    runs.append(None)
    return fn(x)

  return tf.recompute_grad(run)
