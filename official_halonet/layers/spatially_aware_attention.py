"""SASA's attention stem: attention inside each pooling window, with position-mixed values.

SASA (Ramachandran et al., 2019, §3.2 and appendix A.1) replaces the 7×7 conv stem with attention
followed by batch normalization and a p×p max pool (p = 4). The attention's receptive field is the
pooling window itself: the image is cut into non-overlapping p×p blocks aligned with the pooling
grid, and every pixel attends to the pixels of its own block. Logits are content-only (no relative
position term). Since single RGB pixels carry little content, the values are made spatially aware:
key (a, c) sits at row α = a mod p and column γ = c mod p of its pooling window, and its value is a
convex mixture of M value projections weighted by that position,

    v_ac = sum_m p_m(α, γ) · W_V^m x_ac,     p_m(α, γ) = softmax_m( (e_row[α] + e_col[γ]) · ν_m )
    y_ij = sum_{(a,c) in block(i,j)} softmax_ac( D^-1/2 · q_ij · k_ac ) v_ac

with e_row, e_col [p, E] embeddings of the row and column inside the window, ν [E, M], and p shared
by all heads. Pixels outside the image (when H or W is not a multiple of p) are masked out of the
softmax. This is HaloAttention with b = p, h = 0, no relative logits, and the M value maps mixed
per key before the attention-weighted sum.

Shapes: [B, H, W, C] -> [B, H, W, value_dim] (stride 1; the stem's max pool downsamples).
"""
from typing import Any, Dict, Optional

import tensorflow as tf
import tf_keras

from official_halonet.layers import blocking
from official_halonet.layers.halo_attention import HaloAttention

_FIXED = ("block_size", "halo_size", "strides", "downsample", "window", "rel_pos",
          "mask_out_of_image", "scale_rel_logits", "rel_pos_initializer")


@tf_keras.utils.register_keras_serializable(package="HaloNet")
class SpatiallyAwareAttention(HaloAttention):
  """The SASA attention stem's attention: p×p block attention with position-mixed values.

  Args:
    key_dim: total query/key width N·D.
    value_dim: total value (= output) width; defaults to `key_dim`.
    pool_size: p, side of the pooling window the attention is aligned with (SASA: 4).
    num_heads: N (SASA's stem: 4 heads sharing one mixture).
    value_mixtures: M, value projections mixed per position in the window.
    mixture_embedding_dim: E, width of the row / column embeddings and of each ν_m.
    **kwargs: `kernel_initializer`, `kernel_regularizer` and the Keras layer arguments.
  """

  def __init__(self,
               key_dim: int,
               value_dim: Optional[int] = None,
               pool_size: int = 4,
               num_heads: int = 4,
               value_mixtures: int = 4,
               mixture_embedding_dim: int = 16,
               **kwargs):
    for fixed in _FIXED:
      if fixed in kwargs:
        raise ValueError(f"SpatiallyAwareAttention sets {fixed} itself (the window is the "
                         f"pool_size×pool_size pooling window); got {fixed}={kwargs[fixed]!r}.")
    for name, value in (("pool_size", pool_size), ("value_mixtures", value_mixtures),
                        ("mixture_embedding_dim", mixture_embedding_dim)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    self.pool_size = pool_size
    self.value_mixtures = value_mixtures
    self.mixture_embedding_dim = mixture_embedding_dim
    super().__init__(num_heads=num_heads, key_dim=key_dim, value_dim=value_dim,
                     block_size=pool_size, halo_size=0, strides=1, rel_pos="none",
                     mask_out_of_image=True, **kwargs)

  def build(self, input_shape):
    def table(name, shape):
      init = tf_keras.initializers.RandomNormal(stddev=self.mixture_embedding_dim**-0.5)
      return self.add_weight(name, shape, initializer=init)

    self.mixture_row = table("mixture_row", [self.pool_size, self.mixture_embedding_dim])
    self.mixture_col = table("mixture_col", [self.pool_size, self.mixture_embedding_dim])
    self.mixture_nu = table("mixture_nu", [self.mixture_embedding_dim, self.value_mixtures])
    super().build(input_shape)

  def _value_projection_width(self) -> int:
    return self.value_mixtures * self.value_dim

  def mixture_weights(self) -> tf.Tensor:
    """[p², M]: p_m for each position α·p + γ of the pooling window; each row sums to 1."""
    embedding = self.mixture_row[:, None, :] + self.mixture_col[None, :, :]  # [p, p, E]
    logits = tf.einsum("rce,em->rcm", embedding, self.mixture_nu)
    return tf.reshape(tf.nn.softmax(logits, axis=-1), [self.pool_size**2, self.value_mixtures])

  def _values(self, v: tf.Tensor) -> tf.Tensor:
    """Mixes the M value maps of each key by its window position:
    [B, Z, K, M·value_dim] -> [B, Z, K, N, value_dim / N]."""
    batch, blocks, keys, _ = blocking.dims(v)
    v = tf.reshape(v, [batch, blocks, keys, self.value_mixtures, self.value_dim])
    mixed = tf.einsum("bzkmd,km->bzkd", v, tf.cast(self.mixture_weights(), v.dtype))
    return super()._values(mixed)

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    for fixed in _FIXED:
      config.pop(fixed, None)
    config.update(pool_size=self.pool_size, value_mixtures=self.value_mixtures,
                  mixture_embedding_dim=self.mixture_embedding_dim)
    return config
