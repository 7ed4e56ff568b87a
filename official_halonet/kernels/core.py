"""The static shape of one fused attention call, shared by the kernel (JAX) and TensorFlow's side.

Standard library only: export.py (side environment) and layers/fused_attention.py (TensorFlow)
both import it. Arrays (heads side by side on the minor axis, as the layer's projections write
them; one float dtype for all), Z = B·X·Y blocks in row-major order:
  q        [Z, Q, N·D]                       queries, unscaled
  kv_map   [B, X·b + 2h, Y·b + 2h + R - w, N·(D + Dv)]   keys then values of every pixel,
                                             zero-padded by h (and R - w more columns on the right)
  pos      [Z, Q, 2·N·w]                     rows of heads 0..N-1, then cols of heads 0..N-1
  out      [Z, Q, N·Dv]
  windows  [Z, w·R, N·(D + Dv)]              the kernel's gradient of each block's window, read as
                                             w rows of R pixels; the map's is their scatter-add
A window row is read R = w rounded up to a multiple of ROW_TILE pixels wide (DMA copies move whole
tiles of rows); the extra R - w keys of each row are masked out of the softmax.
"""
import dataclasses
from typing import Dict, List

ROW_TILE = 8


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

  @property
  def window(self) -> int:
    return self.block + 2 * self.halo

  @property
  def keys(self) -> int:
    return self.window**2

  @property
  def row(self) -> int:
    """R: pixels read per window row."""
    return -(-self.window // ROW_TILE) * ROW_TILE

  @property
  def blocks(self) -> int:
    return self.batch * self.blocks_x * self.blocks_y

  def shapes(self) -> Dict[str, List[int]]:
    """The arrays' shapes by name (see the module docstring)."""
    n, z = self.heads, self.blocks
    channels = n * (self.key_width + self.value_width)
    return {"q": [z, self.queries, n * self.key_width],
            "kv_map": [self.batch, self.blocks_x * self.block + 2 * self.halo,
                       self.blocks_y * self.block + 2 * self.halo + self.row - self.window,
                       channels],
            "pos": [z, self.queries, 2 * n * self.window],
            "out": [z, self.queries, n * self.value_width],
            "windows": [z, self.window * self.row, channels]}

  def flops(self, backward: bool = False) -> int:
    """The analytic count, 2 per multiply-add of the products: forward q·k and P·v; backward the
    recomputed q·k, then dV = Pᵀ·dO, dP = dO·vᵀ, dq = dL·k and dk = dLᵀ·q (softmax and position
    terms not counted)."""
    widths = 3 * self.key_width + 2 * self.value_width if backward else (
        self.key_width + self.value_width)
    return 2 * self.queries * self.keys * widths * self.heads * self.blocks
