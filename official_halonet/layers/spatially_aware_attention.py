"""SASA's attention stem: k×k attention whose values depend on where the key sits (SASA §3.3).

At the stem, pixels are single RGB values, so content-only values carry no spatial structure; SASA
makes the value of key (a, c), as seen from query (i, j), a position-dependent mixture of M value
projections:

    v_ac(i, j) = sum_m p_m(a-i, c-j) · W_V^m x_ac
    p_m(δa, δc) = softmax_m( (e_row[δa] + e_col[δc]) · ν_m )

and then attends exactly as SASAAttention does (centred k×k window, split relative logits):

    y_ij = sum_{(a,c)} softmax_ac(...) · v_ac(i, j)
         = sum_m sum_{(a,c)} [softmax_ac(...) · p_m(a-i, c-j)] · W_V^m x_ac

which is how it is computed: the attention weights of each block are multiplied by the constant-
shaped [bq², w², M] mixture table and contracted with the M value maps.

Shapes: [B, H, W, C] -> [B, ceil(H/s), ceil(W/s), value_dim]. Windows here are centred, so k is
odd; the paper's stem used a 4×4 extent, the default here is the nearest centred one, 5×5.
"""
from typing import Any, Dict

import tensorflow as tf
import tf_keras

from official_halonet.layers import blocking
from official_halonet.layers import relative_position
from official_halonet.layers.sasa_attention import SASAAttention


@tf_keras.utils.register_keras_serializable(package="HaloNet")
class SpatiallyAwareAttention(SASAAttention):
  """SASAAttention with M position-mixed value projections (the SASA attention stem).

  Args:
    value_mixtures: M, value projections mixed per relative position (SASA used 4).
    mixture_embedding_dim: width of the row / column offset embeddings and of each ν_m.
    kernel_size: k (odd, default 5). Other arguments as SASAAttention.
  """

  def __init__(self, key_dim: int, value_mixtures: int = 4, mixture_embedding_dim: int = 16,
               kernel_size: int = 5, **kwargs):
    if isinstance(value_mixtures, bool) or not isinstance(value_mixtures, int) or (
        value_mixtures < 1):
      raise ValueError(f"value_mixtures must be an integer >= 1, got {value_mixtures!r}.")
    if not isinstance(mixture_embedding_dim, int) or mixture_embedding_dim < 1:
      raise ValueError(f"mixture_embedding_dim must be an integer >= 1, got "
                       f"{mixture_embedding_dim!r}.")
    self.value_mixtures = value_mixtures
    self.mixture_embedding_dim = mixture_embedding_dim
    super().__init__(key_dim=key_dim, kernel_size=kernel_size, **kwargs)

  def build(self, input_shape):
    rows = relative_position.table_rows(self.window_size)
    init = lambda: tf_keras.initializers.RandomNormal(stddev=self.mixture_embedding_dim**-0.5)
    self.mixture_row = self.add_weight("mixture_row", [rows, self.mixture_embedding_dim],
                                       initializer=init())
    self.mixture_col = self.add_weight("mixture_col", [rows, self.mixture_embedding_dim],
                                       initializer=init())
    self.mixture_nu = self.add_weight("mixture_nu", [self.mixture_embedding_dim,
                                                     self.value_mixtures], initializer=init())
    super().build(input_shape)

  def _value_projection_width(self) -> int:
    return self.value_mixtures * self.value_dim

  def mixture_weights(self) -> tf.Tensor:
    """[bq², w², M]: p_m for every (query in block, key in window) pair; sums to 1 over M."""
    index = relative_position.window_index(self.block_size, self.halo_size, self.query_stride)
    rows = tf.gather(self.mixture_row, index)  # [bq, w, E]: query row i', key row k
    cols = tf.gather(self.mixture_col, index)
    embedding = rows[:, None, :, None, :] + cols[None, :, None, :, :]  # [bq, bq, w, w, E]
    p = tf.nn.softmax(tf.einsum("ijkle,em->ijklm", embedding, self.mixture_nu), axis=-1)
    bq, window = index.shape
    return tf.reshape(p, [bq * bq, window * window, self.value_mixtures])

  def _aggregate(self, weights: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
    batch, blocks, keys, _ = blocking.dims(v)
    n = self.num_heads
    v = tf.reshape(v, [batch, blocks, keys, self.value_mixtures, n, self.value_dim // n])
    mixed = weights[..., None] * tf.cast(self.mixture_weights(), weights.dtype)  # [B,Z,N,Q,K,M]
    shape = blocking.dims(mixed)
    mixed = tf.reshape(mixed, shape[:4] + [keys * self.value_mixtures])  # rank 5 for oneDNN
    v = tf.reshape(tf.transpose(v, [0, 1, 4, 2, 3, 5]), [batch, blocks, n, -1, v.shape[-1]])
    return tf.einsum("bznqj,bznjd->bzqnd", mixed, v)

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update(value_mixtures=self.value_mixtures,
                  mixture_embedding_dim=self.mixture_embedding_dim)
    return config
