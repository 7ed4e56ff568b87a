"""Halo attention's core as one Pallas TPU kernel: the logits never leave the core's memory.

JAX side only (the pinned jax 0.6's Pallas, in a process of its own): TensorFlow calls what
`export.py` makes of it (layers/fused_attention.py).

For each block z (Q = bq² queries, K = w² keys of its window) and head n, with q, k, v that head's
channels and the query at block row i, column j:

    rows[u] = q·T[i·w + u],  cols[c] = q·T[bq·w + j·w + c]      (T: the layer's `tables`)
    L = scale · q·kᵀ + rows[u] + cols[c]        (key at window row u, column c)
    P = softmax(L) over the keys,   out = P·v

the same math as layers/block_attention.py without a mask (or, for SASA's centred windows,
`core.centered`, with the mask that keeps each query's own (2h + 1)² keys: see below) (T holds the rows of r_h and r_w that
relative_position.window_index names, times the layer's position scale). XLA writes L to HBM
between the q·k and P·v products (two separate instructions); here a grid step holds G blocks of
one block row whole in VMEM, so HBM sees only q, the tables, the output and the windows, which the
step copies row by row (one DMA per window row) from the zero-padded k/v map: no gathered copy of
the windows is ever written, and no position term either. q and the output stay in the map's
layout [B, X·bq, Y·bq, C] (backward: dO and dq too) where a step's bq rows of G·bq pixels fill
whole row tiles (Core.map_layout): the step reads and writes each block's bq×bq pixels of them in
VMEM, so nothing outside the kernel re-blocks them; elsewhere they come and go block by block.
The step works block by block and head by head in 2-D products (the pinned libtpu's Mosaic
compiler takes batched products of 32-bit types only).

The position factors come from two small products: R = q·Tᵀ [Q, 2·bq·w] against every query row's
and column's table rows, then pos = (R ⊙ M)·F [Q, 2w], with M the constant 0/1 mask keeping each
query's own row and column and F the constant one-hot that folds table row i·w + u onto u (and
bq·w + j·w + c onto w + c): a selection on the MXU instead of a per-query gather, which would need
lane shuffles. Then, with E [K, 2w] the constant one-hot of each key's window row and column
(E[u·w + c] = e_u ⊕ e_c), the position terms ride in the q·k product:

    L = [scale·q, pos] · [k, E]ᵀ

one MXU pass of depth D + 2w (44 for D = 16, w = 14: the MXU's 128-deep pass is no longer) instead
of a [Q, w] -> [Q, w²] broadcast. A centred window's mask is separable (a key is the query's when
its row u is within h of the query's row i, i ≤ u ≤ i + 2h in window rows, and its column within
h of the query's column), so it rides in pos too: a constant bias B [Q, 2w] adds MASKED to the
window rows and columns outside the query's own, pos = (R ⊙ M)·F + B; every key outside gets
MASKED from its row or its column (or both), and zero probability. scale·q, T and pos are rounded to the inputs' dtype for their
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
import dataclasses
import functools
import math
from typing import NamedTuple, Optional

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


def window_bias(core: Core) -> np.ndarray:
  """B [Q, 2w] float32 of a centred window: 0 for the window rows (first w) and columns (last w)
  within h of the query's own, i ≤ u ≤ i + 2h and j ≤ c ≤ j + 2h, MASKED for the others."""
  i, j = np.divmod(np.arange(core.queries), core.query_side)
  w = np.arange(core.window)[None]
  offset = np.concatenate([w - i[:, None], w - j[:, None]], axis=1)
  return (MASKED * ((offset < 0) | (offset > 2 * core.halo))).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Step:
  """A grid step's share of the blocks: `group` (G, core.group) blocks of one block row; the grid
  has core.blocks / G steps. Both the kernels and the BlockSpecs' index maps place a step by
  `origin`."""
  core: Core
  group: int

  @property
  def count(self) -> int:
    """Grid steps."""
    return self.core.blocks // self.group

  def origin(self, i):
    """(image, block row x, first block column y) of grid step i's G blocks; i may be traced
    (pl.program_id in a kernel, the index map's argument in a BlockSpec)."""
    first, core = i * self.group, self.core
    per_image = core.blocks_x * core.blocks_y
    return first // per_image, (first % per_image) // core.blocks_y, first % core.blocks_y

  def map_index(self, i):
    """Index map of a map-layout array's block [1, bq, G·bq, C] (q, out, dq): step i's."""
    image, x, y = self.origin(i)
    return image, x, y // self.group, 0

  def current(self):
    """`origin` of the step the kernel is running."""
    return self.origin(pl.program_id(0))


class Constants(NamedTuple):
  """A step's shared operands: T [2·bq·w, D] and F [2·bq·w, 2w] in the inputs' dtype, M
  [Q, 2·bq·w] and, for a centred window, B [Q, 2w] float32 (see the module docstring)."""
  tables: jax.Array
  fold: jax.Array
  mask: jax.Array
  bias: Optional[jax.Array]


def _load_windows(step: Step, kv_map, windows, semaphores):
  """Copies the step's G windows from the map in HBM to the VMEM buffer [G, w·R, C], one DMA of R
  pixels per window row from the row tile holding its first pixel, and waits for them."""
  core = step.core
  b, w = core.block, core.window
  image, x, y = step.current()  # window rows start at x·b of the padded map
  copies = []
  for j in range(step.group):
    start = pl.multiple_of(core.window_start(y + j), ROW_TILE)
    for u in range(w):
      copy = pltpu.make_async_copy(kv_map.at[image, x * b + u, pl.ds(start, core.row), :],
                                   windows.at[j, pl.ds(u * core.row, core.row), :],
                                   semaphores.at[j * w + u])
      copy.start()
      copies.append(copy)
  for copy in copies:
    copy.wait()


def _mm(a, b, spec: str):
  """One 2-D product on the MXU, accumulated in float32 (spec: a jnp.einsum of two operands)."""
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _key_positions(step: Step, j: int, e_ref, dtype):
  """E [w·R, 2w + 1] in `dtype` of the step's block j, for where its window starts."""
  if len(step.core.shifts) == 1:
    return e_ref[0].astype(dtype)
  _, _, y = step.current()
  return e_ref[step.core.shift_index(y + j)].astype(dtype)


def _read_block(core: Core, ref, j: int):
  """The step's block j of q (or dO) as [Q, C] in the ref's dtype: in the map layout its bq×bq
  pixels of the step's bq rows, flattened through float32 (whose 8-row tiles split evenly)."""
  if not core.map_layout:
    return ref[j]
  bq, c = core.query_side, ref.shape[-1]
  pixels = ref[0, :, pl.ds(j * bq, bq), :].astype(jnp.float32)
  return pixels.reshape(bq * bq, c).astype(ref.dtype)


def _write_block(core: Core, ref, j: int, value, channels: slice):
  """Stores value [Q, c] (float32) in `channels` of the step's block j of out (or dq), the inverse
  of `_read_block`."""
  if not core.map_layout:
    ref[j, :, channels] = value.astype(ref.dtype)
    return
  bq = core.query_side
  ref[0, :, pl.ds(j * bq, bq), channels] = value.reshape(bq, bq, -1).astype(ref.dtype)


def _constants(core: Core, dtype, t_ref, refs):
  """(the step's shared operands, T and F in `dtype`; E's ref; the refs after the constants) from
  the refs after T: E, M, F, then B for a centred window."""
  e_ref, m_ref, f_ref, *rest = refs
  b_ref, rest = (rest[0], rest[1:]) if core.centered else (None, rest)
  constants = Constants(tables=t_ref[...].astype(dtype), fold=f_ref[...].astype(dtype),
                        mask=m_ref[...], bias=None if b_ref is None else b_ref[...])
  return constants, e_ref, rest


def _head(core: Core, n: int, queries, window, keys, constants: Constants):
  """Head n's operands from one block's queries [Q, N·D], window [w·R, C] and key positions E:
  qx = [scale·q, pos, 1] [Q, D + 2w + 1], kx = [k, E] [w·R, D + 2w + 1], q [Q, D] and v
  [w·R, Dv], all in the inputs' dtype."""
  d, v_width, heads = core.key_width, core.value_width, core.heads
  q = queries[:, n * d:(n + 1) * d]
  k = window[:, n * d:(n + 1) * d]
  v = window[:, heads * d + n * v_width:heads * d + (n + 1) * v_width]
  own = (_mm(q, constants.tables, "qd,td->qt") * constants.mask).astype(q.dtype)
  pos = _mm(own, constants.fold, "qt,tc->qc")
  if constants.bias is not None:  # a centred window: MASKED on the rows and columns not its own
    pos = pos + constants.bias
  scaled = (core.scale * q.astype(jnp.float32)).astype(q.dtype)
  qx = jnp.concatenate([scaled, pos.astype(q.dtype), jnp.ones((q.shape[0], 1), q.dtype)],
                       axis=-1)
  return qx, jnp.concatenate([k, keys], axis=-1), q, v


def _probabilities(qx, kx):
  """P = softmax(qx·kxᵀ) [Q, K] float32."""
  logits = _mm(qx, kx, "qc,kc->qk")
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def _forward_kernel(step: Step, q_ref, kv_map, t_ref, *refs):
  """One grid step of `forward`: out of the step's G blocks (refs as `_call` passes them: the
  constants, out, the windows' buffer and the DMA semaphores)."""
  core = step.core
  constants, e_ref, (out_ref, windows, semaphores) = _constants(core, q_ref.dtype, t_ref, refs)
  _load_windows(step, kv_map, windows, semaphores)
  v_width = core.value_width
  for j in range(step.group):  # each block's heads go straight to their channels of the output
    queries, window = _read_block(core, q_ref, j), windows[j]
    keys = _key_positions(step, j, e_ref, q_ref.dtype)
    for n in range(core.heads):
      qx, kx, _, v = _head(core, n, queries, window, keys, constants)
      out = _mm(_probabilities(qx, kx).astype(v.dtype), v, "qk,kd->qd")
      _write_block(core, out_ref, j, out, slice(n * v_width, (n + 1) * v_width))


def _backward_head(core: Core, qx, kx, q, v, dout, constants: Constants):
  """One block's and head's gradients (float32): dq [Q, D], dk [w·R, D], dv [w·R, Dv], and
  dR [Q, 2·bq·w] in the inputs' dtype (the tables' gradient is dRᵀ·q)."""
  d, w = core.key_width, core.window
  p = _probabilities(qx, kx)
  dv = _mm(p.astype(dout.dtype), dout, "qk,qd->kd")
  dp = _mm(dout, v, "qd,kd->qk")
  dl = (p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))).astype(q.dtype)
  dqx = _mm(dl, kx, "qk,kc->qc")  # [dq / scale, dpos, ·]
  dk = core.scale * _mm(dl, q, "qk,qd->kd")
  dr = _mm(dqx[:, d:d + 2 * w].astype(q.dtype), constants.fold, "qc,tc->qt")
  dr = (dr * constants.mask).astype(q.dtype)
  dq = core.scale * dqx[:, :d] + _mm(dr, constants.tables, "qt,td->qd")
  return dq, dk, dv, dr


def _backward_kernel(step: Step, q_ref, kv_map, t_ref, *refs):
  """One grid step of `backward`: dq, the windows' gradients and the step's partial sum of dT
  (refs: the constants, dout, dq, dwindows, dT, the windows' buffer, the DMA semaphores)."""
  core = step.core
  constants, e_ref, rest = _constants(core, q_ref.dtype, t_ref, refs)
  dout_ref, dq_ref, dkv_ref, dt_ref, windows, semaphores = rest
  _load_windows(step, kv_map, windows, semaphores)
  d, v_width, heads = core.key_width, core.value_width, core.heads
  dt = jnp.zeros(dt_ref.shape[1:], jnp.float32)
  for j in range(step.group):  # each block's and head's gradients go straight to their channels
    queries, douts = _read_block(core, q_ref, j), _read_block(core, dout_ref, j)
    window = windows[j]
    keys = _key_positions(step, j, e_ref, q_ref.dtype)
    for n in range(heads):
      qx, kx, q, v = _head(core, n, queries, window, keys, constants)
      dq, dk, dv, dr = _backward_head(
          core, qx, kx, q, v, douts[:, n * v_width:(n + 1) * v_width], constants)
      dt += _mm(dr, q, "qt,qd->td")
      _write_block(core, dq_ref, j, dq, slice(n * d, (n + 1) * d))
      dkv_ref[j, :, n * d:(n + 1) * d] = dk.astype(dkv_ref.dtype)
      values = slice(heads * d + n * v_width, heads * d + (n + 1) * v_width)
      dkv_ref[j, :, values] = dv.astype(dkv_ref.dtype)
    used = heads * (d + v_width)
    if used < core.kv_channels:  # the zero channels that pad the map to whole lane tiles
      dkv_ref[j, :, used:] = jnp.zeros((dkv_ref.shape[1], core.kv_channels - used), dkv_ref.dtype)
  dt_ref[0] = dt


def _call(kernel, core: Core, inputs, outputs, backward: bool, interpret: bool):
  """pallas_call of `kernel` over the blocks, G a step (steps independent: 'parallel'): inputs q,
  kv_map (left in HBM), the tables, E, M and F whole, and in backward dout; returns the arrays
  named by `outputs` (the tables' gradient as float32 per-step partial sums, core.table_steps;
  the rest in the inputs' dtype)."""
  dtype = inputs[0].dtype
  step = Step(core, core.group(dtype.itemsize, backward))
  g, shapes, bq = step.group, core.shapes(), core.query_side

  def block(name):  # the step's G blocks: G·bq map pixels of a block row for q, out and dq
    if name == "windows" or not core.map_layout:
      return pl.BlockSpec((g,) + tuple(shapes[name][1:]), lambda i: (i, 0, 0))
    return pl.BlockSpec((1, bq, g * bq, shapes[name][-1]), step.map_index)

  whole = lambda shape: pl.BlockSpec(tuple(shape), lambda i: (0,) * len(shape))
  mask, fold = table_selection(core)
  constants = [jnp.asarray(key_positions(core), dtype), jnp.asarray(mask), jnp.asarray(fold)]
  constants += [jnp.asarray(window_bias(core))] if core.centered else []
  in_specs = [block("q"), pl.BlockSpec(memory_space=pltpu.ANY), whole(shapes["tables"])]
  in_specs += [whole(c.shape) for c in constants] + ([block("out")] if backward else [])
  steps = core.table_steps(dtype.itemsize)
  out_specs = [pl.BlockSpec((1,) + tuple(steps[1:]), lambda i: (i, 0, 0)) if name == "tables"
               else block(name) for name in outputs]
  out_shape = [jax.ShapeDtypeStruct(steps, jnp.float32) if name == "tables"
               else jax.ShapeDtypeStruct(shapes[name], dtype) for name in outputs]
  # What the call moves through HBM: q, the windows as their DMAs read them (w rows of R pixels,
  # filler included) and the output, in backward also dout, dq and the windows' gradient; the
  # tables and constants once; in backward the tables' per-step partial sums.
  blocked = ["q", "windows", "out"] + ([n for n in outputs if n != "tables"] if backward else [])
  moved = sum(math.prod(shapes[name]) * dtype.itemsize for name in blocked)
  moved += sum(c.size * c.dtype.itemsize for c in constants)
  return pl.pallas_call(
      functools.partial(kernel, step), grid=(step.count,), in_specs=in_specs,
      out_specs=out_specs if backward else out_specs[0],
      out_shape=out_shape if backward else out_shape[0],
      scratch_shapes=[pltpu.VMEM((g,) + tuple(shapes["windows"][1:]), dtype),
                      pltpu.SemaphoreType.DMA((g * core.window,))],
      interpret=interpret,
      compiler_params=pltpu.TPUCompilerParams(dimension_semantics=("parallel",)),
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
