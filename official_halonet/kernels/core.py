"""The static shape of one fused attention call, shared by the kernel (JAX) and TensorFlow's side.

Standard library only: export.py (side environment) and layers/fused_attention.py (TensorFlow)
both import it. Arrays (heads side by side on the minor axis, as the layer's projections write
them; one float dtype for all):
  q    [Z, Q, N·D]                queries, unscaled
  kv   [Z, K, N·D + N·Dv]         a window's K = w² pixels: keys, then values
  pos  [Z, Q, 2·N·w]              rows of heads 0..N-1, then cols of heads 0..N-1
  out  [Z, Q, N·Dv]
"""
import dataclasses
from typing import List


@dataclasses.dataclass(frozen=True)
class Core:
  """One layer's attention core: one exported kernel per Core, dtype and platform."""
  blocks: int       # Z: batch × blocks per image
  queries: int      # Q
  window: int       # w (K = w² keys)
  heads: int        # N
  key_width: int    # D
  value_width: int  # Dv
  scale: float      # multiplies q·k

  @property
  def keys(self) -> int:
    return self.window**2

  def shapes(self) -> List[List[int]]:
    """[q, kv, pos, out] array shapes."""
    n = self.heads
    return [[self.blocks, self.queries, n * self.key_width],
            [self.blocks, self.keys, n * (self.key_width + self.value_width)],
            [self.blocks, self.queries, 2 * n * self.window],
            [self.blocks, self.queries, n * self.value_width]]

  def flops(self, backward: bool = False) -> int:
    """The analytic count, 2 per multiply-add of the products: forward q·k and P·v; backward the
    recomputed q·k, then dV = Pᵀ·dO, dP = dO·vᵀ, dq = dL·k and dk = dLᵀ·q (softmax and position
    terms not counted)."""
    widths = 3 * self.key_width + 2 * self.value_width if backward else (
        self.key_width + self.value_width)
    return 2 * self.queries * self.keys * widths * self.heads * self.blocks
