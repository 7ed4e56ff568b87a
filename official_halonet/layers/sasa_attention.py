"""Stand-alone self-attention (SASA; Ramachandran et al., NeurIPS 2019, eq. 2-3).

Each pixel attends to the k×k window centred on it:

    y_ij = sum_{(a,c) in N_k(i,j)} softmax_ac( D^-1/2 · q_ij·k_ac + q_ij·r_{a-i,c-j} ) v_ac

with r_{a-i,c-j} = concat(r_row[a-i], r_col[c-j]): half of each head's channels embed the row offset
and half the column offset. It is computed as the blocked halo attention with halo h = floor(k/2) and
a mask that keeps, for each query, only its centred k×k part of the (b + 2h)² block window; the block
size b only trades memory for redundant work and does not change the result. Downsampling is stride-1
attention followed by s×s average pooling, as in the paper.

Shapes: [B, H, W, C] -> [B, ceil(H/s), ceil(W/s), value_dim]; B, H, W may be None when traced.
"""
from typing import Any, Dict, Optional

import tf_keras

from official_halonet.layers.halo_attention import HaloAttention


@tf_keras.utils.register_keras_serializable(package="HaloNet")
class SASAAttention(HaloAttention):
  """SASA k×k local attention (k odd, default 7, 8 heads) on the blocked halo computation.

  Args:
    key_dim: total query/key width (N·D); D must be even for the half-row/half-column embedding.
    value_dim: total value (= output) width, defaults to `key_dim`.
    kernel_size: k, the odd side of the centred window.
    num_heads: N (default 8).
    strides: s; downsampling by s×s average pooling after attention.
    block_size: b of the blocked computation (default 8).
    **kwargs: `kernel_initializer`, `kernel_regularizer`, `rel_pos_initializer`, `scale_rel_logits`,
      `mask_out_of_image` and the Keras layer arguments, as for HaloAttention.
  """

  def __init__(self,
               key_dim: int,
               value_dim: Optional[int] = None,
               kernel_size: int = 7,
               num_heads: int = 8,
               strides: int = 1,
               block_size: int = 8,
               **kwargs):
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 3 or (
        kernel_size % 2 == 0):
      raise ValueError(f"kernel_size must be an odd integer >= 3, got {kernel_size!r}.")
    for fixed in ("halo_size", "window", "rel_pos", "downsample"):
      if fixed in kwargs:
        raise ValueError(f"SASAAttention sets {fixed} itself; use HaloAttention to choose it.")
    self.kernel_size = kernel_size
    super().__init__(num_heads=num_heads, key_dim=key_dim, value_dim=value_dim,
                     block_size=block_size, halo_size=kernel_size // 2, strides=strides,
                     downsample="avg_pool", window="centered", rel_pos="split", **kwargs)

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    for fixed in ("halo_size", "window", "rel_pos", "downsample"):
      config.pop(fixed)
    config["kernel_size"] = self.kernel_size
    return config
