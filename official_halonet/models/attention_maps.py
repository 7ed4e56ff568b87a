"""Where each query looks: the attention probabilities of a model's attention layers on images.

`probe(model, images)` runs the part of the model in front of each chosen HaloAttention /
SASAAttention layer, then the layer itself with `return_attention_scores=True`, so the maps are the
layer's own softmax (not a re-derivation of its math). Positions are converted from the layer's
input grid to image pixels, so maps of layers at different strides share one coordinate frame.

`mean_distance` is the receptive-field measure of the HaloNet paper's argument: for each head, the
expected distance (in image pixels) between a query and the pixels it attends to, averaged over
the queries inside the image.
"""
import dataclasses
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from official_halonet.layers import HaloAttention


@dataclasses.dataclass
class LayerAttention:
  """One attention layer's probabilities on a batch of images.

  probabilities: float32 [B, Z, N, Q, K]: Z blocks, N heads, Q queries per block, K = w² keys.
  queries: float [Z, Q, 2] and keys: float [Z, K, 2]: (row, column) centres in image pixels.
  query_inside: bool [Z, Q]: the query is an image pixel (not padding of the layer's input).
  key_inside: bool [Z, K]: the key is inside the layer's input (outside: zero padding).
  window: w, the side of the key window; pixel: image pixels per pixel of the layer's input.
  """
  name: str
  probabilities: np.ndarray
  queries: np.ndarray
  keys: np.ndarray
  query_inside: np.ndarray
  key_inside: np.ndarray
  window: int
  pixel: float

  @property
  def num_heads(self) -> int:
    return self.probabilities.shape[2]

  def nearest_query(self, row: float, column: float):
    """(block, query) of the in-image query closest to image point (row, column)."""
    distance = np.hypot(self.queries[..., 0] - row, self.queries[..., 1] - column)
    distance = np.where(self.query_inside, distance, np.inf)
    return np.unravel_index(np.argmin(distance), distance.shape)


def attention_layers(model: tf_keras.Model) -> List[HaloAttention]:
  """Every HaloAttention (SASA included) in `model` and its nested models, in graph order."""
  found = []
  for layer in model.layers:
    if isinstance(layer, HaloAttention):
      found.append(layer)
    elif isinstance(layer, tf_keras.Model):
      found.extend(attention_layers(layer))
  return found


def _owner(model: tf_keras.Model, layer: tf_keras.layers.Layer) -> tf_keras.Model:
  """The (possibly nested) functional model whose own layers include `layer`."""
  if any(child is layer for child in model.layers):
    return model
  for child in model.layers:
    if isinstance(child, tf_keras.Model) and layer in attention_layers(child):
      return _owner(child, layer)
  raise ValueError(f"layer {layer.name!r} is not in model {model.name!r}")


def select_layers(model: tf_keras.Model, names: Optional[Sequence[str]] = None
                  ) -> List[HaloAttention]:
  """The attention layers named in `names` (all when None or empty); unknown names are listed."""
  layers = attention_layers(model)
  if not layers:
    raise ValueError(f"model {model.name!r} has no HaloAttention / SASAAttention layer to draw")
  if not names:
    return layers
  by_name = {layer.name: layer for layer in layers}
  unknown = [name for name in names if name not in by_name]
  if unknown:
    raise ValueError(f"no attention layer named {', '.join(unknown)}; the model has "
                     f"{', '.join(by_name)}")
  return [by_name[name] for name in names]


def probe(model: tf_keras.Model, images, names: Optional[Sequence[str]] = None
          ) -> List[LayerAttention]:
  """Attention of the chosen layers (default: all) on `images` [B, H, W, 3], preprocessed as the
  model expects (the project's models take ImageNet-normalised images)."""
  images = tf.convert_to_tensor(images, tf.float32)
  image_height = int(images.shape[1])
  result = []
  for layer in select_layers(model, names):
    # A nested backbone takes the images unchanged from the classifier around it.
    owner = _owner(model, layer)
    features = tf_keras.Model(owner.inputs, layer.input)(images, training=False)
    _, probabilities = layer(features, return_attention_scores=True)
    height, width = int(features.shape[1]), int(features.shape[2])
    queries, keys = layer.attention_positions(height, width)
    pixel = image_height / height
    result.append(LayerAttention(
        name=layer.name, probabilities=probabilities.numpy(),
        queries=(queries + 0.5) * pixel, keys=(keys + 0.5) * pixel,
        query_inside=(queries[..., 0] < height) & (queries[..., 1] < width),
        key_inside=((keys >= 0).all(-1) & (keys[..., 0] < height) & (keys[..., 1] < width)),
        window=layer.window_size, pixel=pixel))
  return result


def mean_distance(attention: LayerAttention) -> np.ndarray:
  """[N] per head: E_p ||key - query|| in image pixels, averaged over in-image queries and images."""
  offsets = attention.keys[:, None, :, :] - attention.queries[:, :, None, :]  # [Z, Q, K, 2]
  distance = np.hypot(offsets[..., 0], offsets[..., 1])
  expected = np.einsum("bznqk,zqk->bnzq", attention.probabilities, distance)
  return expected[:, :, attention.query_inside].mean(axis=(0, 2))
