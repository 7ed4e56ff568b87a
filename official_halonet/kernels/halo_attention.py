"""Halo attention's core as one Pallas TPU kernel: the logits never leave the core's memory.

JAX side only: it runs in the TPU compiler's side environment (requirements-tpu.txt), never in the
project's; TensorFlow calls what `export.py` makes of it (layers/fused_attention.py).

For each block z (Q queries, K = w² keys of its window) and head n, with q, k, v that head's
channels:

    L = scale · q·kᵀ + rows[u] + cols[c]        (key at window row u, column c)
    P = softmax(L) over the keys,   out = P·v

the same math as layers/block_attention.py without a mask. XLA writes L to HBM between the q·k and
P·v products (two separate instructions); here a grid step holds a few blocks whole in VMEM, so
HBM sees only q, the windows, the position terms and the output.

The position terms ride in the q·k product: with E [K, 2w] the constant one-hot of each key's
window row and column (E[u·w + c] = e_u ⊕ e_c),

    L = [scale·q, rows, cols] · [k, E]ᵀ

one MXU pass of depth D + 2w (44 for D = 16, w = 14: the MXU's 128-deep pass is no longer) instead
of a product and a [Q, w] -> [Q, w²] broadcast, which would need lane shuffles. scale·q is rounded
to the inputs' dtype for the product, as XLA's own float32 dot on TPU rounds its operands to
bfloat16. Logits, softmax and every product accumulate in float32; probabilities are rounded to
the inputs' dtype before the P·v product (as the MXU takes them).

`backward` recomputes P from q, kv and pos (nothing of the forward's is kept) and returns the
gradients of all three:
  dV = Pᵀ·dO,  dP = dO·vᵀ,  dL = P ⊙ (dP − Σ_keys P ⊙ dP),
  [dq / scale, drows, dcols] = dL·[k, E],  dk = scale · dLᵀ·q.
Shapes: core.py (q, kv, pos, out).
"""
import functools
import math

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


def key_positions(window: int) -> np.ndarray:
  """E [w², 2w]: key u·w + c has a one at column u (its row) and at w + c (its column)."""
  key = np.arange(window * window)
  return np.concatenate([(key[:, None] // window == np.arange(window)[None]),
                         (key[:, None] % window == np.arange(window)[None])], axis=1)


def _head(core: Core, n: int, q_ref, kv_ref, pos_ref, e_ref):
  """Head n's operands: qx = [scale·q, rows, cols] [G, Q, D + 2w], kx = [k, E] [G, K, D + 2w],
  q [G, Q, D] and v [G, K, Dv], all in the inputs' dtype."""
  d, dv, w, heads = core.key_width, core.value_width, core.window, core.heads
  q = q_ref[:, :, n * d:(n + 1) * d]
  k = kv_ref[:, :, n * d:(n + 1) * d]
  v = kv_ref[:, :, heads * d + n * dv:heads * d + (n + 1) * dv]
  scaled = (core.scale * q.astype(jnp.float32)).astype(q.dtype)
  qx = jnp.concatenate([scaled, pos_ref[:, :, n * w:(n + 1) * w],
                        pos_ref[:, :, (heads + n) * w:(heads + n + 1) * w]], axis=-1)
  e = jnp.broadcast_to(e_ref[...][None], (k.shape[0],) + e_ref.shape)
  return qx, jnp.concatenate([k, e], axis=-1), q, v


def _probabilities(qx, kx):
  """P = softmax(qx·kxᵀ) [G, Q, K] float32."""
  logits = jnp.einsum("gqc,gkc->gqk", qx, kx, preferred_element_type=jnp.float32)
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def _forward_kernel(core: Core, q_ref, kv_ref, pos_ref, e_ref, out_ref):
  dv = core.value_width
  for n in range(core.heads):  # each head's result goes straight to its channels of the output
    qx, kx, _, v = _head(core, n, q_ref, kv_ref, pos_ref, e_ref)
    p = _probabilities(qx, kx)
    out = jnp.einsum("gqk,gkd->gqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out_ref[:, :, n * dv:(n + 1) * dv] = out.astype(out_ref.dtype)


def _backward_kernel(core: Core, q_ref, kv_ref, pos_ref, e_ref, dout_ref, dq_ref, dkv_ref,
                     dpos_ref):
  f32, d, dv, w, heads = jnp.float32, core.key_width, core.value_width, core.window, core.heads
  for n in range(heads):  # each head's gradients go straight to its channels of the outputs
    qx, kx, q, v = _head(core, n, q_ref, kv_ref, pos_ref, e_ref)
    p = _probabilities(qx, kx)
    dout = dout_ref[:, :, n * dv:(n + 1) * dv]
    dv_n = jnp.einsum("gqk,gqd->gkd", p.astype(dout.dtype), dout, preferred_element_type=f32)
    dp = jnp.einsum("gqd,gkd->gqk", dout, v, preferred_element_type=f32)
    dl = (p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))).astype(q.dtype)
    dqx = jnp.einsum("gqk,gkc->gqc", dl, kx, preferred_element_type=f32)  # [dq/scale, drows, dcols]
    dk = core.scale * jnp.einsum("gqk,gqd->gkd", dl, q, preferred_element_type=f32)
    dq_ref[:, :, n * d:(n + 1) * d] = (core.scale * dqx[:, :, :d]).astype(dq_ref.dtype)
    dkv_ref[:, :, n * d:(n + 1) * d] = dk.astype(dkv_ref.dtype)
    dkv_ref[:, :, heads * d + n * dv:heads * d + (n + 1) * dv] = dv_n.astype(dkv_ref.dtype)
    dpos_ref[:, :, n * w:(n + 1) * w] = dqx[:, :, d:d + w].astype(dpos_ref.dtype)
    dpos_ref[:, :, (heads + n) * w:(heads + n + 1) * w] = dqx[:, :, d + w:].astype(dpos_ref.dtype)


def _call(kernel, core: Core, inputs, outputs, backward: bool, interpret: bool):
  """pallas_call of `kernel` over the blocks, G a step: [q, kv, pos], the key positions E whole,
  and in backward dout; returns the arrays named by `outputs` (of q, kv, pos, out)."""
  dtype = inputs[0].dtype
  g = group(core, dtype.itemsize, backward)
  shapes = dict(zip(("q", "kv", "pos", "out"), core.shapes()))
  block = lambda name: pl.BlockSpec((g,) + tuple(shapes[name][1:]), lambda i: (i, 0, 0))
  positions = key_positions(core.window)
  out_specs = [block(name) for name in outputs]
  out_shape = [jax.ShapeDtypeStruct(shapes[name], dtype) for name in outputs]
  in_specs = [block(name) for name in ("q", "kv", "pos")]
  in_specs.append(pl.BlockSpec(positions.shape, lambda i: (0, 0)))
  in_specs += [block("out")] if backward else []
  return pl.pallas_call(
      functools.partial(kernel, core), grid=(core.blocks // g,), in_specs=in_specs,
      out_specs=out_specs if backward else out_specs[0],
      out_shape=out_shape if backward else out_shape[0], interpret=interpret,
      cost_estimate=pl.CostEstimate(
          flops=core.flops(backward),
          transcendentals=core.blocks * core.heads * core.queries * core.keys,
          bytes_accessed=sum(int(np.prod(shapes[name])) * dtype.itemsize
                             for name in ["q", "kv", "pos", "out"] + (outputs if backward else []))),
  )(*inputs[:3], jnp.asarray(positions, dtype), *inputs[3:])


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
