"""Halo attention's core as one Pallas TPU kernel: the logits never leave the core's memory.

JAX side only: it runs in the TPU compiler's side environment (requirements-tpu.txt), never in the
project's; TensorFlow calls what `export.py` makes of it (layers/fused_attention.py).

For each block z (Q = bq² queries, K = w² keys of its window) and head n, with q, k, v that head's
channels and the query at block row i, column j:

    rows[u] = q·T[i·w + u],  cols[c] = q·T[bq·w + j·w + c]      (T: the layer's `tables`)
    L = scale · q·kᵀ + rows[u] + cols[c]        (key at window row u, column c)
    P = softmax(L) over the keys,   out = P·v

the same math as layers/block_attention.py without a mask (T holds the rows of r_h and r_w that
relative_position.window_index names, times the layer's position scale). XLA writes L to HBM
between the q·k and P·v products (two separate instructions); here a grid step holds G blocks of
one block row whole in VMEM, so HBM sees only q, the tables, the output and the windows, which the
step copies row by row (one DMA per window row) from the zero-padded k/v map: no gathered copy of
the windows is ever written, and no position term either. q and the output stay in the map's
layout [B, X·bq, Y·bq, C] (backward: dO and dq too) where a step's bq rows of G·bq pixels fill
whole row tiles (Core.map_layout): the step re-blocks them in VMEM, so nothing outside the kernel
does; elsewhere they come and go block by block.

The position factors come from two small products: R = q·Tᵀ [Q, 2·bq·w] against every query row's
and column's table rows, then pos = (R ⊙ M)·F [Q, 2w], with M the constant 0/1 mask keeping each
query's own row and column and F the constant one-hot that folds table row i·w + u onto u (and
bq·w + j·w + c onto w + c): a selection on the MXU instead of a per-query gather, which would need
lane shuffles. Then, with E [K, 2w] the constant one-hot of each key's window row and column
(E[u·w + c] = e_u ⊕ e_c), the position terms ride in the q·k product:

    L = [scale·q, pos] · [k, E]ᵀ

one MXU pass of depth D + 2w (44 for D = 16, w = 14: the MXU's 128-deep pass is no longer) instead
of a [Q, w] -> [Q, w²] broadcast. scale·q, T and pos are rounded to the inputs' dtype for their
products, as XLA's own float32 dot on TPU rounds its operands to bfloat16 (each fold sums one
product, so pos is R rounded once). Logits, softmax and every product accumulate in float32;
probabilities are rounded to the inputs' dtype before the P·v product (as the MXU takes them).

`backward` recomputes P from q, the map and T (nothing of the forward's is kept) and returns the
gradients of q, of each block's window (TensorFlow adds them into the map's) and of T:
  dV = Pᵀ·dO,  dP = dO·vᵀ,  dL = P ⊙ (dP − Σ_keys P ⊙ dP),
  [dq / scale, dpos] = dL·[k, E],  dk = scale · dLᵀ·q,
  dR = (dpos·Fᵀ) ⊙ M,  dq += dR·T,  dT = Σ_blocks,heads dRᵀ·q
(dT in float32, one partial sum per grid step, which TensorFlow adds up: the steps are independent,
so the grid is 'parallel' and a chip with two TensorCores splits it between them).
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
from core import Core, ROW_TILE  # pylint: disable=g-import-not-at-top

MASKED = -1e9  # the logit of a key read only to fill a window row's tiles


def key_positions(core: Core) -> np.ndarray:
  """E [shifts, w·R, 2w + 1]: for a window starting `shift` pixels into its first row tile, the
  key read at window row u, pixel c' (column c = c' - shift) has a one at column u (its row) and at
  w + c (its column); pixels outside the window are filler, with MASKED in the last column
  instead."""
  w, row = core.window, core.row
  u, read = np.divmod(np.arange(w * row), row)
  positions = []
  for shift in core.shifts:
    c = read - shift
    filler = (c < 0) | (c >= w)
    positions.append(np.concatenate([(u[:, None] == np.arange(w)[None]) & ~filler[:, None],
                                     (c[:, None] == np.arange(w)[None]),
                                     (MASKED * filler)[:, None]], axis=1))
  return np.stack(positions).astype(np.float32)


def table_selection(core: Core):
  """(M [Q, 2·bq·w], F [2·bq·w, 2w]) float32: M[q, t] = 1 where table row t is one query q reads
  (its block row's, t < bq·w, or its block column's); F[t, :] is the one-hot of the window row
  (or w + the window column) that table row t serves."""
  bq, w = core.query_side, core.window
  i, j = np.divmod(np.arange(core.queries), bq)
  line, _ = np.divmod(np.arange(bq * w), w)  # the query row (or column) of each table row
  mask = np.concatenate([i[:, None] == line[None], j[:, None] == line[None]], axis=1)
  rows = np.arange(2 * bq * w)
  fold = np.tile(np.arange(w), 2 * bq) + w * (rows >= bq * w)  # the column each row lands in
  return mask.astype(np.float32), (fold[:, None] == np.arange(2 * w)[None]).astype(np.float32)


def _step_blocks(core: Core, g: int):
  """(image, block row x, first block column y) of the grid step's G blocks."""
  first = pl.program_id(0) * g
  per_image = core.blocks_x * core.blocks_y
  return first // per_image, (first % per_image) // core.blocks_y, first % core.blocks_y


def _load_windows(core: Core, kv_map, windows, semaphores):
  """Copies the step's G windows from the map in HBM to the VMEM buffer [G, w·R, C], one DMA of R
  pixels per window row from the row tile holding its first pixel, and waits for them."""
  g, b, w = windows.shape[0], core.block, core.window
  image, x, y = _step_blocks(core, g)  # window rows start at x·b of the padded map
  copies = []
  for j in range(g):
    start = pl.multiple_of(core.window_start(y + j), ROW_TILE)
    for u in range(w):
      copy = pltpu.make_async_copy(kv_map.at[image, x * b + u, pl.ds(start, core.row), :],
                                   windows.at[j, pl.ds(u * core.row, core.row), :],
                                   semaphores.at[j * w + u])
      copy.start()
      copies.append(copy)
  for copy in copies:
    copy.wait()


def _key_positions(core: Core, g: int, e_ref, dtype):
  """E of each of the step's G blocks [G, w·R, 2w + 1] in `dtype`, for where its window starts."""
  if len(core.shifts) == 1:
    return jnp.broadcast_to(e_ref[0].astype(dtype)[None], (g,) + e_ref.shape[1:])
  _, _, y = _step_blocks(core, g)
  return jnp.stack([e_ref[core.shift_index(y + j)].astype(dtype) for j in range(g)])


def _read_blocks(core: Core, ref, g: int):
  """A step's q (or dO) as [G, Q, C] in the ref's dtype: from bq rows of G·bq pixels in the map
  layout, re-blocked through float32 (whose 8-row tiles split evenly), else as stored."""
  if not core.map_layout:
    return ref[...]
  bq, c = core.query_side, ref.shape[-1]
  rows = ref[0].astype(jnp.float32).reshape(bq, g, bq, c)
  return jnp.swapaxes(rows, 0, 1).reshape(g, bq * bq, c).astype(ref.dtype)


def _write_blocks(core: Core, ref, value, channels: slice):
  """Stores value [G, Q, c] (float32) in `channels` of a step's out (or dq) block, the inverse of
  `_read_blocks`."""
  if not core.map_layout:
    ref[:, :, channels] = value.astype(ref.dtype)
    return
  g, bq, c = value.shape[0], core.query_side, value.shape[-1]
  rows = jnp.swapaxes(value.reshape(g, bq, bq, c), 0, 1).reshape(bq, g * bq, c)
  ref[0, :, :, channels] = rows.astype(ref.dtype)


def _constants(core: Core, g: int, dtype, t_ref, e_ref, m_ref, f_ref):
  """The step's shared operands, broadcast over its G blocks: T [G, 2·bq·w, D] and F
  [G, 2·bq·w, 2w] in `dtype`, M [G, Q, 2·bq·w] float32 and E [G, w·R, 2w + 1] in `dtype`."""
  spread = lambda ref, to: jnp.broadcast_to(ref[...].astype(to)[None], (g,) + ref.shape)
  return dict(tables=spread(t_ref, dtype), fold=spread(f_ref, dtype),
              mask=spread(m_ref, jnp.float32), keys=_key_positions(core, g, e_ref, dtype))


def _head(core: Core, n: int, queries, windows, constants):
  """Head n's operands from the step's queries [G, Q, N·D]: qx = [scale·q, pos, 1]
  [G, Q, D + 2w + 1], kx = [k, E] [G, w·R, D + 2w + 1], q [G, Q, D] and v [G, w·R, Dv], all in
  the inputs' dtype."""
  d, dv, heads = core.key_width, core.value_width, core.heads
  q = queries[:, :, n * d:(n + 1) * d]
  k = windows[:, :, n * d:(n + 1) * d]
  v = windows[:, :, heads * d + n * dv:heads * d + (n + 1) * dv]
  every = jnp.einsum("gqd,gtd->gqt", q, constants["tables"], preferred_element_type=jnp.float32)
  own = (every * constants["mask"]).astype(q.dtype)
  pos = jnp.einsum("gqt,gtc->gqc", own, constants["fold"], preferred_element_type=jnp.float32)
  scaled = (core.scale * q.astype(jnp.float32)).astype(q.dtype)
  qx = jnp.concatenate([scaled, pos.astype(q.dtype),
                        jnp.ones(scaled.shape[:2] + (1,), scaled.dtype)], axis=-1)
  return qx, jnp.concatenate([k, constants["keys"]], axis=-1), q, v


def _probabilities(qx, kx):
  """P = softmax(qx·kxᵀ) [G, Q, K] float32."""
  logits = jnp.einsum("gqc,gkc->gqk", qx, kx, preferred_element_type=jnp.float32)
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def _forward_kernel(core: Core, q_ref, kv_map, t_ref, e_ref, m_ref, f_ref, out_ref, windows,
                    semaphores):
  _load_windows(core, kv_map, windows, semaphores)
  g, dv = windows.shape[0], core.value_width
  constants = _constants(core, g, q_ref.dtype, t_ref, e_ref, m_ref, f_ref)
  queries = _read_blocks(core, q_ref, g)
  for n in range(core.heads):  # each head's result goes straight to its channels of the output
    qx, kx, _, v = _head(core, n, queries, windows, constants)
    p = _probabilities(qx, kx)
    out = jnp.einsum("gqk,gkd->gqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    _write_blocks(core, out_ref, out, slice(n * dv, (n + 1) * dv))


def _backward_kernel(core: Core, q_ref, kv_map, t_ref, e_ref, m_ref, f_ref, dout_ref, dq_ref,
                     dkv_ref, dt_ref, windows, semaphores):
  _load_windows(core, kv_map, windows, semaphores)
  f32, d, dv, w, heads = jnp.float32, core.key_width, core.value_width, core.window, core.heads
  g = windows.shape[0]
  constants = _constants(core, g, q_ref.dtype, t_ref, e_ref, m_ref, f_ref)
  queries, douts = _read_blocks(core, q_ref, g), _read_blocks(core, dout_ref, g)
  dt = jnp.zeros(dt_ref.shape[1:], f32)
  for n in range(heads):  # each head's gradients go straight to its channels of the outputs
    qx, kx, q, v = _head(core, n, queries, windows, constants)
    p = _probabilities(qx, kx)
    dout = douts[:, :, n * dv:(n + 1) * dv]
    dv_n = jnp.einsum("gqk,gqd->gkd", p.astype(dout.dtype), dout, preferred_element_type=f32)
    dp = jnp.einsum("gqd,gkd->gqk", dout, v, preferred_element_type=f32)
    dl = (p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))).astype(q.dtype)
    dqx = jnp.einsum("gqk,gkc->gqc", dl, kx, preferred_element_type=f32)  # [dq/scale, dpos, ·]
    dk = core.scale * jnp.einsum("gqk,gqd->gkd", dl, q, preferred_element_type=f32)
    dpos = dqx[:, :, d:d + 2 * w].astype(q.dtype)
    dr = jnp.einsum("gqc,gtc->gqt", dpos, constants["fold"], preferred_element_type=f32)
    dr = (dr * constants["mask"]).astype(q.dtype)
    dq = core.scale * dqx[:, :, :d] + jnp.einsum("gqt,gtd->gqd", dr, constants["tables"],
                                                 preferred_element_type=f32)
    dt += jnp.sum(jnp.einsum("gqt,gqd->gtd", dr, q, preferred_element_type=f32), axis=0)
    _write_blocks(core, dq_ref, dq, slice(n * d, (n + 1) * d))
    dkv_ref[:, :, n * d:(n + 1) * d] = dk.astype(dkv_ref.dtype)
    dkv_ref[:, :, heads * d + n * dv:heads * d + (n + 1) * dv] = dv_n.astype(dkv_ref.dtype)
  dt_ref[0] = dt


def _call(kernel, core: Core, inputs, outputs, backward: bool, interpret: bool):
  """pallas_call of `kernel` over the blocks, G a step (steps independent: 'parallel'): inputs q,
  kv_map (left in HBM), the tables, E, M and F whole, and in backward dout; returns the arrays
  named by `outputs` (the tables' gradient as float32 per-step partial sums, core.table_steps;
  the rest in the inputs' dtype)."""
  dtype = inputs[0].dtype
  g = core.group(dtype.itemsize, backward)
  shapes = core.shapes()
  per_image, bq = core.blocks_x * core.blocks_y, core.query_side

  def block(name):  # the step's G blocks: G·bq map pixels of a block row for q, out and dq
    if name == "windows" or not core.map_layout:
      return pl.BlockSpec((g,) + tuple(shapes[name][1:]), lambda i: (i, 0, 0))
    at = lambda i: (i * g // per_image, i * g % per_image // core.blocks_y,
                    i * g % core.blocks_y // g, 0)
    return pl.BlockSpec((1, bq, g * bq, shapes[name][-1]), at)


  whole = lambda shape: pl.BlockSpec(tuple(shape), lambda i: (0,) * len(shape))
  mask, fold = table_selection(core)
  constants = [jnp.asarray(key_positions(core), dtype), jnp.asarray(mask), jnp.asarray(fold)]
  in_specs = [block("q"), pl.BlockSpec(memory_space=pl.ANY), whole(shapes["tables"])]
  in_specs += [whole(c.shape) for c in constants] + ([block("out")] if backward else [])
  steps = core.table_steps(dtype.itemsize)
  out_specs = [pl.BlockSpec((1,) + tuple(steps[1:]), lambda i: (i, 0, 0)) if name == "tables"
               else block(name) for name in outputs]
  out_shape = [jax.ShapeDtypeStruct(steps, jnp.float32) if name == "tables"
               else jax.ShapeDtypeStruct(shapes[name], dtype) for name in outputs]
  blocked = ["q", "windows", "out"] + ([n for n in outputs if n != "tables"] if backward else [])
  moved = sum(math.prod(shapes[name]) * dtype.itemsize for name in blocked)
  return pl.pallas_call(
      functools.partial(kernel, core), grid=(core.blocks // g,), in_specs=in_specs,
      out_specs=out_specs if backward else out_specs[0],
      out_shape=out_shape if backward else out_shape[0],
      scratch_shapes=[pltpu.VMEM((g,) + tuple(shapes["windows"][1:]), dtype),
                      pltpu.SemaphoreType.DMA((g * core.window,))],
      interpret=interpret,
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
      cost_estimate=pl.CostEstimate(
          flops=core.flops(backward),
          transcendentals=core.blocks * core.heads * core.queries * core.window * core.row,
          bytes_accessed=moved + 4 * math.prod(shapes["tables"]) + (
              4 * math.prod(steps) if backward else 0)),
  )(*inputs[:3], *constants, *inputs[3:])


def forward(core: Core, interpret: bool = False):
  """out = f(q, kv_map, tables) for arrays of `core.shapes()` (q and the map in any one float
  dtype, the tables float32)."""
  return lambda q, kv_map, tables: _call(_forward_kernel, core, [q, kv_map, tables], ["out"],
                                         False, interpret)


def backward(core: Core, interpret: bool = False):
  """(dq, dwindows, dtables) = f(q, kv_map, tables, dout): the gradients of Σ out ⊙ dout with
  respect to q, each block's window and the tables."""
  return lambda q, kv_map, tables, dout: _call(
      _backward_kernel, core, [q, kv_map, tables, dout], ["q", "windows", "tables"], True,
      interpret)
