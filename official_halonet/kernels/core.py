"""The static shape of one fused attention call, shared by the kernel (JAX) and TensorFlow's side.

Standard library only: export.py (JAX's process) and layers/fused_attention.py (TensorFlow)
both import it. Arrays (heads side by side on the minor axis, as the layer's projections write
them; one float dtype for all but the tables, which are float32), Z = B·X·Y blocks in row-major
order, each holding Q = bq² queries (bq rows of bq pixels):
  q        [B, X·bq, Y·bq, N·D]              queries, unscaled, as the query projection writes
                                             them (block z holds bq rows of bq pixels); or, where
                                             not `map_layout`, [Z, Q, N·D], block by block
  kv_map   [B, X·b + 2h, Y·b + 2h + R - w, Ckv]   keys then values of every pixel (N·(D + Dv)
                                             channels, zero-padded to Ckv = `kv_channels`, whole
                                             tiles of 128), zero-padded by h (and R - w more
                                             columns on the right)
  tables   [2·bq·w, D]   float32             the position embedding each query row i reads for
                                             window row u (row i·w + u), then each query column j
                                             for window column c (row bq·w + j·w + c); shared by
                                             the heads
  out      [B, X·bq, Y·bq, N·Dv]             the attention's output map, each block in its place
                                             (or [Z, Q, N·Dv] where not `map_layout`)
  windows  [Z, w·R, Ckv]                     the kernel's gradient of each block's window, read as
                                             w rows of R pixels (zero in the padding channels);
                                             the map's is their scatter-add
The backward returns the tables' gradient as one float32 [2·bq·w, D] partial sum per grid step
(`table_steps`; their sum is the gradient), so that no step depends on another and a chip with two
TensorCores may split the grid between them. A step takes `group` blocks of one block row.
A window row is read from the row tile holding its first pixel, R pixels wide (DMA copies move
whole tiles of rows): R = w rounded up to whole tiles when b is a multiple of ROW_TILE, and wide
enough for any shift of the window within its first tile otherwise; the R - w extra keys of each
row are masked out of the softmax.
"""
import dataclasses
import math
from typing import Dict, List

ROW_TILE = 8
LANE_TILE = 128  # the minor dimension's tile: a DMA's channel slice must be whole tiles of it
VMEM_BUDGET = 10 << 20  # bytes of VMEM a grid step's blocks and temporaries should take
SCOPED_VMEM = 16 << 20  # the TPU compiler's default limit of a kernel's VMEM (v5e)


class DoesNotFit(ValueError):
  """A core whose grid step needs more VMEM than the TPU compiler allows; the message says how
  much (the caller says what to change)."""


@dataclasses.dataclass(frozen=True)
class Core:
  """One layer's attention core: one exported kernel per Core, dtype and platform."""
  batch: int        # B
  blocks_x: int     # X: block rows per image
  blocks_y: int     # Y: block columns per image
  block: int        # b
  halo: int         # h
  queries: int      # Q per block
  heads: int        # N
  key_width: int    # D
  value_width: int  # Dv
  scale: float      # multiplies q·k
  position_width: int  # channels of q each table row meets (D, or D/2 for SASA's split tables,
                       # zero-padded to D in `tables`): for the FLOP count only
  centered: bool = False  # SASA's window: each query keeps only the keys within h rows and h
                          # columns of itself (b + 2h window positions, 2h + 1 of them its own)

  def __post_init__(self):
    if self.query_side**2 != self.queries:
      raise ValueError(f"queries={self.queries} per block is not a square")
    if self.centered and self.query_side != self.block:
      raise ValueError("a centred window needs a query at every pixel of the block (stride 1)")

  @property
  def query_side(self) -> int:
    """bq: query rows (and columns) per block."""
    return math.isqrt(self.queries)

  @property
  def window(self) -> int:
    return self.block + 2 * self.halo

  @property
  def keys(self) -> int:
    return self.window**2

  @property
  def row(self) -> int:
    """R: pixels read per window row, from the row tile holding the window's first pixel."""
    return -(-(self.window + self.shifts[-1]) // ROW_TILE) * ROW_TILE

  @property
  def shifts(self) -> List[int]:
    """Where in its row tile a window may start: the block's first column y·b modulo ROW_TILE."""
    return list(range(0, ROW_TILE, math.gcd(self.block, ROW_TILE)))

  def window_start(self, y):
    """The first pixel read for block column y (of the padded map): its window's, rounded down to a
    whole row tile (DMA copies start at tiles). y may be a traced integer."""
    return y * self.block // ROW_TILE * ROW_TILE

  def shift_index(self, y):
    """Which of `shifts` block column y's window starts at. y may be a traced integer."""
    return y * self.block % ROW_TILE // math.gcd(self.block, ROW_TILE)

  @property
  def blocks(self) -> int:
    return self.batch * self.blocks_x * self.blocks_y

  @property
  def kv_channels(self) -> int:
    """Channels of kv_map and of the windows: N·(D + Dv) zero-padded up to whole lane tiles
    (libtpu 0.0.14's Mosaic copies a window row only in whole tiles of 128 channels)."""
    return -(-self.heads * (self.key_width + self.value_width) // LANE_TILE) * LANE_TILE

  def shapes(self) -> Dict[str, List[int]]:
    """The arrays' shapes by name (see the module docstring)."""
    n, z = self.heads, self.blocks
    channels = self.kv_channels
    height, width = self.blocks_x * self.query_side, self.blocks_y * self.query_side
    maps = lambda channels: ([self.batch, height, width, channels] if self.map_layout
                             else [z, self.queries, channels])
    return {"q": maps(n * self.key_width),
            "kv_map": [self.batch, self.blocks_x * self.block + 2 * self.halo,
                       self.blocks_y * self.block + 2 * self.halo + self.row - self.window,
                       channels],
            "tables": [2 * self.query_side * self.window, self.key_width],
            "out": maps(n * self.value_width),
            "windows": [z, self.window * self.row, channels]}

  def flops(self, backward: bool = False) -> int:
    """The model's analytic count, 2 per multiply-add: forward q·k, P·v and the position terms
    q·r (w rows and w columns of `position_width` channels per query); backward the recomputed q·k
    and position terms, then dV = Pᵀ·dO, dP = dO·vᵀ, dq = dL·k, dk = dLᵀ·q and the position
    terms' gradients of q and of the tables (the softmax and the kernel's one-hot selections of
    each query's table rows not counted)."""
    widths = 3 * self.key_width + 2 * self.value_width if backward else (
        self.key_width + self.value_width)
    position = 2 * self.window * self.position_width * (3 if backward else 1)
    return 2 * self.queries * (self.keys * widths + position) * self.heads * self.blocks

  @property
  def map_layout(self) -> bool:
    """Whether q and out stay in the map's layout: a grid step then reads bq rows of G·bq pixels,
    which must fill whole 8-row tiles (bq a multiple of 8, or bq = 4 and G even)."""
    return (self.query_side % ROW_TILE == 0
            or (self.query_side == ROW_TILE // 2 and self.blocks_y % 2 == 0))

  def step_bytes(self, itemsize: int, backward: bool) -> int:
    """VMEM one block of a grid step takes: the blocked arrays double-buffered (inputs and
    outputs; twice as many in backward), its window and six float32 [Q, K]-sized temporaries
    (four of the logits' size, two of the position factors')."""
    shapes = self.shapes()
    arrays = self.queries * (self.heads * (self.key_width + self.value_width))  # q and out
    windows = math.prod(shapes["windows"][1:])
    arrays = arrays * (2 if backward else 1) + windows * (3 if backward else 1)
    temporaries = 4 * self.window * self.row + 2 * 2 * self.query_side * self.window
    return 2 * arrays * itemsize + self.queries * temporaries * 4

  def group(self, itemsize: int, backward: bool) -> int:
    """Blocks per grid step: the most, up to 8, that divide a block row, fill whole row tiles in
    the map layout and fit VMEM_BUDGET (at least the fewest that can)."""
    fits = VMEM_BUDGET // self.step_bytes(itemsize, backward)
    whole = ROW_TILE // math.gcd(ROW_TILE, self.query_side) if self.map_layout else 1
    able = [g for g in range(whole, 9, whole) if self.blocks_y % g == 0]
    return max([g for g in able if g <= fits] or able[:1])

  def check_fits(self, itemsize: int) -> None:
    """Raises DoesNotFit when the backward's grid step cannot fit the compiler's VMEM limit."""
    need = self.group(itemsize, backward=True) * self.step_bytes(itemsize, backward=True)
    if need > SCOPED_VMEM:
      raise DoesNotFit(
          f"fused attention: a block of {self.queries} queries against a {self.window}×"
          f"{self.window} window needs {need / 2**20:.1f} MiB of VMEM per grid step, over the "
          f"TPU compiler's {SCOPED_VMEM >> 20} MiB")

  def table_steps(self, itemsize: int) -> List[int]:
    """Shape of the backward's per-step partial sums of the tables' gradient, for arrays of
    `itemsize` bytes: [steps, 2·bq·w, D]."""
    return [self.blocks // self.group(itemsize, backward=True)] + self.shapes()["tables"]
