"""Halo attention's core as one Pallas TPU kernel: the logits never leave the core's memory.

JAX side only: it runs in the TPU compiler's side environment (requirements-tpu.txt), never in the
project's; TensorFlow calls what `export.py` makes of it (layers/fused_attention.py).

For each block z (Q queries, K = w² keys of its window) and head n, with q, k, v that head's
channels:

    L = scale · q·kᵀ + rows[u] + cols[c]        (key at window row u, column c)
    P = softmax(L) over the keys,   out = P·v

the same math as layers/block_attention.py without a mask. XLA writes L to HBM between the q·k and
P·v products (two separate instructions); here a grid step holds G blocks of one block row whole
in VMEM, so HBM sees only q, the position terms, the output and the windows, which the step copies
row by row (one DMA per window row) from the zero-padded k/v map: no gathered copy of the windows
is ever written.

The position terms ride in the q·k product: with E [K, 2w] the constant one-hot of each key's
window row and column (E[u·w + c] = e_u ⊕ e_c),

    L = [scale·q, rows, cols] · [k, E]ᵀ

one MXU pass of depth D + 2w (44 for D = 16, w = 14: the MXU's 128-deep pass is no longer) instead
of a product and a [Q, w] -> [Q, w²] broadcast, which would need lane shuffles. scale·q is rounded
to the inputs' dtype for the product, as XLA's own float32 dot on TPU rounds its operands to
bfloat16. Logits, softmax and every product accumulate in float32; probabilities are rounded to
the inputs' dtype before the P·v product (as the MXU takes them).

`backward` recomputes P from q, the map and pos (nothing of the forward's is kept) and returns the
gradients of q, of each block's window (TensorFlow adds them into the map's) and of pos:
  dV = Pᵀ·dO,  dP = dO·vᵀ,  dL = P ⊙ (dP − Σ_keys P ⊙ dP),
  [dq / scale, drows, dcols] = dL·[k, E],  dk = scale · dLᵀ·q.
Shapes: core.py.
"""
import functools
import math

import numpy as np

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

# export.py puts this folder on the path.
from core import Core  # pylint: disable=g-import-not-at-top

VMEM_BUDGET = 10 << 20  # bytes of VMEM a grid step's blocks and temporaries may take (v5e's
                        # default scoped limit is 16 MiB)


def group(core: Core, itemsize: int, backward: bool) -> int:
  """Blocks per grid step: the most, up to 8, that divide a block row and fit VMEM_BUDGET with
  the blocked arrays double-buffered (inputs and outputs; twice as many in backward), the window
  buffer and four float32 [Q, K] temporaries per block."""
  shapes = core.shapes()
  arrays = sum(math.prod(shapes[name][1:]) for name in ("q", "pos", "out"))
  windows = math.prod(shapes["windows"][1:])
  arrays = arrays * (2 if backward else 1) + windows * (3 if backward else 1)
  per_block = 2 * arrays * itemsize + 4 * core.queries * core.window * core.row * 4
  fits = max(1, VMEM_BUDGET // per_block)
  return max(g for g in range(1, min(8, fits) + 1) if core.blocks_y % g == 0)


MASKED = -1e9  # the logit of a key read only to fill a window row's tiles


def key_positions(core: Core) -> np.ndarray:
  """E [w·R, 2w + 1]: the key read at window row u, column c has a one at column u (its row) and
  at w + c (its column); columns c >= w are filler, with MASKED in the last column instead."""
  w, row = core.window, core.row
  u, c = np.divmod(np.arange(w * row), row)
  filler = c >= w
  return np.concatenate([(u[:, None] == np.arange(w)[None]) & ~filler[:, None],
                         (c[:, None] == np.arange(w)[None]),
                         (MASKED * filler)[:, None]], axis=1).astype(np.float32)


def _load_windows(core: Core, kv_map, windows, semaphores):
  """Copies the step's G windows from the map in HBM to the VMEM buffer [G, w·R, C], one DMA of R
  pixels per window row, and waits for them."""
  g, b, w = windows.shape[0], core.block, core.window
  first = pl.program_id(0) * g
  per_image = core.blocks_x * core.blocks_y
  image, x, y = first // per_image, (first % per_image) // core.blocks_y, first % core.blocks_y
  copies = []
  for j in range(g):
    for u in range(w):
      copy = pltpu.make_async_copy(kv_map.at[image, x * b + u, pl.ds((y + j) * b, core.row), :],
                                   windows.at[j, pl.ds(u * core.row, core.row), :],
                                   semaphores.at[j * w + u])
      copy.start()
      copies.append(copy)
  for copy in copies:
    copy.wait()


def _head(core: Core, n: int, q_ref, windows, pos_ref, e_ref):
  """Head n's operands: qx = [scale·q, rows, cols, 1] [G, Q, D + 2w + 1], kx = [k, E]
  [G, w·R, D + 2w + 1], q [G, Q, D] and v [G, w·R, Dv], all in the inputs' dtype."""
  d, dv, w, heads = core.key_width, core.value_width, core.window, core.heads
  q = q_ref[:, :, n * d:(n + 1) * d]
  k = windows[:, :, n * d:(n + 1) * d]
  v = windows[:, :, heads * d + n * dv:heads * d + (n + 1) * dv]
  scaled = (core.scale * q.astype(jnp.float32)).astype(q.dtype)
  qx = jnp.concatenate([scaled, pos_ref[:, :, n * w:(n + 1) * w],
                        pos_ref[:, :, (heads + n) * w:(heads + n + 1) * w],
                        jnp.ones(scaled.shape[:2] + (1,), scaled.dtype)], axis=-1)
  e = jnp.broadcast_to(e_ref[...][None], (k.shape[0],) + e_ref.shape)
  return qx, jnp.concatenate([k, e], axis=-1), q, v


def _probabilities(qx, kx):
  """P = softmax(qx·kxᵀ) [G, Q, K] float32."""
  logits = jnp.einsum("gqc,gkc->gqk", qx, kx, preferred_element_type=jnp.float32)
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def _forward_kernel(core: Core, q_ref, kv_map, pos_ref, e_ref, out_ref, windows, semaphores):
  _load_windows(core, kv_map, windows, semaphores)
  dv = core.value_width
  for n in range(core.heads):  # each head's result goes straight to its channels of the output
    qx, kx, _, v = _head(core, n, q_ref, windows, pos_ref, e_ref)
    p = _probabilities(qx, kx)
    out = jnp.einsum("gqk,gkd->gqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out_ref[:, :, n * dv:(n + 1) * dv] = out.astype(out_ref.dtype)


def _backward_kernel(core: Core, q_ref, kv_map, pos_ref, e_ref, dout_ref, dq_ref, dkv_ref,
                     dpos_ref, windows, semaphores):
  _load_windows(core, kv_map, windows, semaphores)
  f32, d, dv, w, heads = jnp.float32, core.key_width, core.value_width, core.window, core.heads
  for n in range(heads):  # each head's gradients go straight to its channels of the outputs
    qx, kx, q, v = _head(core, n, q_ref, windows, pos_ref, e_ref)
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
    dpos_ref[:, :, (heads + n) * w:(heads + n + 1) * w] = dqx[:, :, d + w:d + 2 * w].astype(
        dpos_ref.dtype)


def _call(kernel, core: Core, inputs, outputs, backward: bool, interpret: bool):
  """pallas_call of `kernel` over the blocks, G a step: inputs q, kv_map (left in HBM), pos, the
  key positions E whole, and in backward dout; returns the arrays named by `outputs`."""
  dtype = inputs[0].dtype
  g = group(core, dtype.itemsize, backward)
  shapes = core.shapes()
  block = lambda name: pl.BlockSpec((g,) + tuple(shapes[name][1:]), lambda i: (i, 0, 0))
  positions = key_positions(core)
  in_specs = [block("q"), pl.BlockSpec(memory_space=pl.ANY), block("pos"),
              pl.BlockSpec(positions.shape, lambda i: (0, 0))]
  in_specs += [block("out")] if backward else []
  out_specs = [block(name) for name in outputs]
  out_shape = [jax.ShapeDtypeStruct(shapes[name], dtype) for name in outputs]
  moved = ["q", "windows", "pos", "out"] + (outputs if backward else [])
  return pl.pallas_call(
      functools.partial(kernel, core), grid=(core.blocks // g,), in_specs=in_specs,
      out_specs=out_specs if backward else out_specs[0],
      out_shape=out_shape if backward else out_shape[0],
      scratch_shapes=[pltpu.VMEM((g,) + tuple(shapes["windows"][1:]), dtype),
                      pltpu.SemaphoreType.DMA((g * core.window,))],
      interpret=interpret,
      cost_estimate=pl.CostEstimate(
          flops=core.flops(backward),
          transcendentals=core.blocks * core.heads * core.queries * core.window * core.row,
          bytes_accessed=sum(math.prod(shapes[name]) * dtype.itemsize for name in moved)),
  )(inputs[0], inputs[1], inputs[2], jnp.asarray(positions, dtype), *inputs[3:])


def forward(core: Core, interpret: bool = False):
  """out = f(q, kv_map, pos) for arrays of `core.shapes()` (any one float dtype)."""
  return lambda q, kv_map, pos: _call(_forward_kernel, core, [q, kv_map, pos], ["out"], False,
                                      interpret)


def backward(core: Core, interpret: bool = False):
  """(dq, dwindows, dpos) = f(q, kv_map, pos, dout): the gradients of Σ out ⊙ dout with respect to
  q, each block's window and pos."""
  return lambda q, kv_map, pos, dout: _call(_backward_kernel, core, [q, kv_map, pos, dout],
                                            ["q", "windows", "pos"], True, interpret)
