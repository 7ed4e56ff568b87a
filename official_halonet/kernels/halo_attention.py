"""Halo attention's core as one Pallas TPU kernel: the logits never leave the core's memory.

JAX side only: it runs in the TPU compiler's side environment (requirements-tpu.txt), never in the
project's; TensorFlow calls what `export.py` makes of it (layers/fused_attention.py).

For each block z (Q queries, K = w² keys of its window) and head n, with q, k, v that head's
channels:

    L = scale · q·kᵀ + rows[u] + cols[c]        (key at window row u, column c)
    P = softmax(L) over the keys,   out = P·v

the same math as layers/block_attention.py without a mask. XLA writes L to HBM between the q·k and
P·v products (two separate instructions); here a grid step holds a few blocks whole in VMEM, so
HBM sees only q, the windows, the position terms and the output. The [Q, w] position factors
become the [Q, K] grid through a product with constant one-hot expanders (E_rows[u, u·w + c] =
E_cols[c, u·w + c] = 1), which costs the MXU little and needs no lane shuffles.

Shapes: core.py (q, kv, pos, out).
Logits, softmax and the products accumulate in float32 whatever the inputs' dtype; probabilities
are rounded to the inputs' dtype before the P·v product (as the MXU takes them).

`backward` recomputes P from q, kv and pos (nothing of the forward's is kept) and returns the
gradients of all three:
  dV = Pᵀ·dO,  dP = dO·vᵀ,  dL = P ⊙ (dP − Σ_keys P ⊙ dP),
  dq = scale · dL·k,  dk = scale · dLᵀ·q,  drows = dL·E_rowsᵀ,  dcols = dL·E_colsᵀ.
"""
import functools
import math
from typing import Tuple

import numpy as np

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from core import Core  # pylint: disable=g-import-not-at-top  (export.py puts this folder on the path)

VMEM_BUDGET = 10 << 20  # bytes of VMEM a grid step's blocks and temporaries may take (v5e's
                        # default scoped limit is 16 MiB)


def group(core: Core, itemsize: int, backward: bool) -> int:
  """Blocks per grid step: the most, up to 8, that divide Z and fit VMEM_BUDGET with every array's
  block double-buffered (inputs and outputs; twice as many in backward) and four float32 [Q, K]
  temporaries per block."""
  arrays = sum(math.prod(shape[1:]) for shape in core.shapes()) * itemsize * (2 if backward else 1)
  per_block = 2 * arrays + 4 * core.queries * core.keys * 4
  fits = max(1, VMEM_BUDGET // per_block)
  return max(g for g in range(1, min(8, fits) + 1) if core.blocks % g == 0)


def expanders(window: int) -> Tuple[np.ndarray, np.ndarray]:
  """E_rows, E_cols [w, w²]: row u (column c) to every key of window row u (column c)."""
  key = np.arange(window * window)
  rows = (key[None, :] // window == np.arange(window)[:, None]).astype(np.float32)
  cols = (key[None, :] % window == np.arange(window)[:, None]).astype(np.float32)
  return rows, cols


def _head(core: Core, n: int, q_ref, kv_ref, pos_ref):
  """Views of head n: q [G, Q, D], k [G, K, D], v [G, K, Dv], rows and cols [G·Q, w] float32."""
  d, dv, w, heads = core.key_width, core.value_width, core.window, core.heads
  q = q_ref[:, :, n * d:(n + 1) * d]
  k = kv_ref[:, :, n * d:(n + 1) * d]
  v = kv_ref[:, :, heads * d + n * dv:heads * d + (n + 1) * dv]
  rows = pos_ref[:, :, n * w:(n + 1) * w].astype(jnp.float32)
  cols = pos_ref[:, :, (heads + n) * w:(heads + n + 1) * w].astype(jnp.float32)
  groups = q.shape[0] * core.queries
  return q, k, v, rows.reshape(groups, w), cols.reshape(groups, w)


def _probabilities(core: Core, q, k, rows, cols, e_rows, e_cols):
  """P = softmax(L) [G, Q, K] float32 for one head."""
  f32 = jnp.float32
  logits = core.scale * jnp.einsum("gqd,gkd->gqk", q, k, preferred_element_type=f32)
  position = (jnp.dot(rows, e_rows, preferred_element_type=f32) +
              jnp.dot(cols, e_cols, preferred_element_type=f32))
  logits = logits + position.reshape(logits.shape)
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def _forward_kernel(core: Core, q_ref, kv_ref, pos_ref, e_rows_ref, e_cols_ref, out_ref):
  dv = core.value_width
  for n in range(core.heads):  # each head's result goes straight to its channels of the output
    q, k, v, rows, cols = _head(core, n, q_ref, kv_ref, pos_ref)
    p = _probabilities(core, q, k, rows, cols, e_rows_ref[...], e_cols_ref[...])
    out = jnp.einsum("gqk,gkd->gqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out_ref[:, :, n * dv:(n + 1) * dv] = out.astype(out_ref.dtype)


def _backward_kernel(core: Core, q_ref, kv_ref, pos_ref, e_rows_ref, e_cols_ref, dout_ref,
                     dq_ref, dkv_ref, dpos_ref):
  f32, d, dv, w, heads = jnp.float32, core.key_width, core.value_width, core.window, core.heads
  for n in range(heads):  # each head's gradients go straight to its channels of the outputs
    q, k, v, rows, cols = _head(core, n, q_ref, kv_ref, pos_ref)
    p = _probabilities(core, q, k, rows, cols, e_rows_ref[...], e_cols_ref[...])
    dout = dout_ref[:, :, n * dv:(n + 1) * dv]
    dv_n = jnp.einsum("gqk,gqd->gkd", p.astype(dout.dtype), dout, preferred_element_type=f32)
    dp = jnp.einsum("gqd,gkd->gqk", dout, v, preferred_element_type=f32)
    dl = p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))
    dl_in = dl.astype(q.dtype)
    dq = core.scale * jnp.einsum("gqk,gkd->gqd", dl_in, k, preferred_element_type=f32)
    dk = core.scale * jnp.einsum("gqk,gqd->gkd", dl_in, q, preferred_element_type=f32)
    flat = dl.reshape(-1, core.keys)
    drows = jax.lax.dot_general(flat, e_rows_ref[...], (((1,), (1,)), ((), ())))
    dcols = jax.lax.dot_general(flat, e_cols_ref[...], (((1,), (1,)), ((), ())))
    dq_ref[:, :, n * d:(n + 1) * d] = dq.astype(dq_ref.dtype)
    dkv_ref[:, :, n * d:(n + 1) * d] = dk.astype(dkv_ref.dtype)
    dkv_ref[:, :, heads * d + n * dv:heads * d + (n + 1) * dv] = dv_n.astype(dkv_ref.dtype)
    dpos_ref[:, :, n * w:(n + 1) * w] = drows.reshape(dq.shape[:2] + (w,)).astype(dpos_ref.dtype)
    dpos_ref[:, :, (heads + n) * w:(heads + n + 1) * w] = dcols.reshape(
        dq.shape[:2] + (w,)).astype(dpos_ref.dtype)


def _call(kernel, core: Core, inputs, outputs, backward: bool, interpret: bool):
  """pallas_call of `kernel` over the blocks, G a step: arrays `inputs` ([q, kv, pos] and in
  backward dout) then the two expanders whole; returns the arrays named by `outputs`."""
  dtype = inputs[0].dtype
  g = group(core, dtype.itemsize, backward)
  shapes = dict(zip(("q", "kv", "pos", "out"), core.shapes()))
  block = lambda name: pl.BlockSpec((g,) + tuple(shapes[name][1:]), lambda i: (i, 0, 0))
  whole = pl.BlockSpec((core.window, core.keys), lambda i: (0, 0))
  e_rows, e_cols = expanders(core.window)
  out_specs = [block(name) for name in outputs]
  out_shape = [jax.ShapeDtypeStruct(shapes[name], dtype) for name in outputs]
  per_block = [block(name) for name in ("q", "kv", "pos")]
  extra = [block("out")] if backward else []
  return pl.pallas_call(
      functools.partial(kernel, core), grid=(core.blocks // g,),
      in_specs=per_block + [whole, whole] + extra,
      out_specs=out_specs if backward else out_specs[0],
      out_shape=out_shape if backward else out_shape[0], interpret=interpret,
      cost_estimate=pl.CostEstimate(
          flops=core.flops(backward),
          transcendentals=core.blocks * core.heads * core.queries * core.keys,
          bytes_accessed=sum(int(np.prod(shapes[name])) * dtype.itemsize
                             for name in ["q", "kv", "pos", "out"] + (outputs if backward else []))),
  )(*inputs[:3], jnp.asarray(e_rows), jnp.asarray(e_cols), *inputs[3:])


def forward(core: Core, interpret: bool = False):
  """out = f(q, kv, pos) for arrays of `core.shapes()` (any one float dtype)."""
  return lambda q, kv, pos: _call(_forward_kernel, core, [q, kv, pos], ["out"], False, interpret)


def backward(core: Core, interpret: bool = False):
  """(dq, dkv, dpos) = f(q, kv, pos, dout): the gradients of Σ out ⊙ dout."""
  return lambda q, kv, pos, dout: _call(_backward_kernel, core, [q, kv, pos, dout],
                                        ["q", "kv", "pos"], True, interpret)


def reference(core: Core, q, kv, pos):
  """The same map in plain jax.numpy, float32 throughout (the tests' independent reference)."""
  n, d, dv, w = core.heads, core.key_width, core.value_width, core.window
  z, nq = q.shape[:2]
  q = q.astype(jnp.float32).reshape(z, nq, n, d)
  kv = kv.astype(jnp.float32)
  k = kv[..., :n * d].reshape(z, core.keys, n, d)
  v = kv[..., n * d:].reshape(z, core.keys, n, dv)
  rows = pos[..., :n * w].astype(jnp.float32).reshape(z, nq, n, w, 1)
  cols = pos[..., n * w:].astype(jnp.float32).reshape(z, nq, n, 1, w)
  logits = (core.scale * jnp.einsum("zqnd,zknd->zqnk", q, k)
            + (rows + cols).reshape(z, nq, n, core.keys))
  p = jax.nn.softmax(logits, axis=-1)
  return jnp.einsum("zqnk,zknd->zqnd", p, v).reshape(z, nq, n * dv)
