"""HaloAttention / SASAAttention against the independent references in attention_reference.py."""
import itertools
import math
import pathlib

import numpy as np
import pytest

import official_halonet  # noqa: F401  (selects tf_keras before TensorFlow resolves tf.keras)
import tensorflow as tf
import tf_keras

from official_halonet.layers import HaloAttention, SASAAttention, SpatiallyAwareAttention
import attention_reference as ref
import tolerance

# Every case below has at most 8 input channels, 8 key channels per head and a window of at most
# 14 pixels a side (b=8, h=3; SASA's 7 in a block of 8 forms the same 14): a reduction chain of at
# most 8 + 8 + 2·14² = 408 terms per output, compared with a float64 loop reference or another
# float32 formulation. 8σ of float32 rounding over that chain is 9.6e-6 (tests/tolerance.py);
# inputs, kernels and tables are O(1), so it bounds absolute and relative error alike.
FLOAT32_TOL = tolerance.random_walk(tolerance.attention_chain(in_channels=8, head_dim=8, window=14))


def _build(layer, shape, seed=0):
  x = tf.random.stateless_normal(shape, seed=[seed, 1])
  layer(x)
  # Non-trivial relative tables (their default init is already random; make them larger so the
  # position term matters as much as the content term).
  if layer.rel_pos != "none":
    for i, table in enumerate((layer.rel_pos_h, layer.rel_pos_w)):
      table.assign(tf.random.stateless_normal(table.shape, seed=[seed, 7 + i]))
  return x


def _halo_kwargs(layer):
  return dict(heads=layer.num_heads, block=layer.block_size, halo=layer.halo_size,
              stride=layer.strides, pool_after=layer.pool_after,
              centered=layer.window == "centered", mask_out_of_image=layer.mask_out_of_image,
              rel_mode=layer.rel_pos, scale_rel=layer.scale_rel_logits)


# The grid the issue asks for: b in {1, 2, 4, 8}, h in {0, 1, 3}, stride in {1, 2}, on a 13×17 map
# (divisible by none of them), 2 heads; then heads, masks and divisible sizes on a smaller product.
GRID = [dict(block_size=b, halo_size=h, strides=s, num_heads=2, size=(13, 17))
        for b, h, s in itertools.product((1, 2, 4, 8), (0, 1, 3), (1, 2))]
GRID += [
    dict(block_size=4, halo_size=1, strides=1, num_heads=1, size=(8, 8)),
    dict(block_size=4, halo_size=2, strides=2, num_heads=4, size=(16, 12)),
    dict(block_size=4, halo_size=1, strides=1, num_heads=2, size=(9, 11), window="centered"),
    dict(block_size=2, halo_size=3, strides=2, num_heads=2, size=(9, 7), mask_out_of_image=True),
    dict(block_size=3, halo_size=2, strides=2, num_heads=2, size=(10, 11)),  # 3 % 2: pooled
    dict(block_size=4, halo_size=1, strides=2, num_heads=2, size=(9, 9), downsample="avg_pool"),
    dict(block_size=4, halo_size=2, strides=1, num_heads=2, size=(7, 10), rel_pos="none"),
    dict(block_size=4, halo_size=1, strides=1, num_heads=2, size=(7, 10), scale_rel_logits=True),
    dict(block_size=8, halo_size=3, strides=1, num_heads=2, size=(13, 17), window="centered",
         mask_out_of_image=True),
]


def _grid_id(case):
  return "-".join(f"{k}={v}" for k, v in case.items()).replace(" ", "")


def _make(case):
  case = dict(case)
  size = case.pop("size")
  layer = HaloAttention(key_dim=8, value_dim=6 * case["num_heads"], **case)
  return layer, size


@pytest.mark.parametrize("case", GRID, ids=_grid_id)
def test_forward_matches_per_pixel_loops(case):
  layer, (height, width) = _make(case)
  x = _build(layer, [2, height, width, 5])
  got = layer(x).numpy()
  want = ref.halo_loops(x.numpy(), *ref.layer_weights(layer), **_halo_kwargs(layer))
  assert got.shape == want.shape == (2, math.ceil(height / layer.strides),
                                     math.ceil(width / layer.strides), layer.value_dim)
  np.testing.assert_allclose(got, want, atol=FLOAT32_TOL, rtol=FLOAT32_TOL)


PROBABILITY_GRID = [c for c in GRID if c["block_size"] in (2, 4) and c["size"] == (13, 17)
                    ] + GRID[24:]


@pytest.mark.parametrize("case", PROBABILITY_GRID, ids=_grid_id)
def test_returned_probabilities_are_the_layers_own(case):
  """return_attention_scores gives the softmax the layer used: equal to the loops' probability
  for every (query, head, key) it lists, zero where the key is masked, summing to 1 per query."""
  layer, (height, width) = _make(case)
  x = _build(layer, [2, height, width, 5], seed=5)
  out, probabilities = layer(x, return_attention_scores=True)
  np.testing.assert_array_equal(out.numpy(), layer(x).numpy())
  queries, keys = layer.attention_positions(height, width)
  bq2, w2 = queries.shape[1], keys.shape[1]
  assert probabilities.shape == (2, queries.shape[0], layer.num_heads, bq2, w2)
  probabilities = probabilities.numpy()
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=FLOAT32_TOL * w2)
  listed = {}
  ref.halo_loops(x.numpy(), *ref.layer_weights(layer), **_halo_kwargs(layer),
                 probabilities=listed)
  got, want = [], []
  for (batch, i, j, head), by_key in listed.items():
    block = (i // layer.block_size) * math.ceil(width / layer.block_size) + j // layer.block_size
    query = np.flatnonzero((queries[block] == (i, j)).all(-1))
    assert query.size == 1, (i, j)
    for key, (a, c) in enumerate(keys[block]):
      got.append(probabilities[batch, block, head, query[0], key])
      want.append(by_key.get((a, c), 0.0))  # not listed: masked out of the softmax
  stride = layer.query_stride  # every query pixel of the image was compared
  assert len({k[1:3] for k in listed}) == math.ceil(height / stride) * math.ceil(width / stride)
  np.testing.assert_allclose(got, want, atol=FLOAT32_TOL, rtol=0)


GRADIENT_GRID = [c for c in GRID if c["block_size"] in (2, 4) and c["size"] == (13, 17)] + GRID[24:]


@pytest.mark.parametrize("case", GRADIENT_GRID, ids=_grid_id)
def test_gradients_match_dense_reference(case):
  layer, (height, width) = _make(case)
  x = _build(layer, [2, height, width, 5], seed=3)
  cotangent = tf.random.stateless_normal(layer.compute_output_shape(x.shape), seed=[4, 4])
  weights = [layer.query.kernel, layer.key_value.kernel]
  if layer.rel_pos != "none":
    weights += [layer.rel_pos_h, layer.rel_pos_w]
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    got = layer(x)
    loss = tf.reduce_sum(got * cotangent)
    wq = layer.query.kernel
    wk, wv = layer.key_value.kernel[:, :layer.key_dim], layer.key_value.kernel[:, layer.key_dim:]
    rel = (layer.rel_pos_h, layer.rel_pos_w) if layer.rel_pos != "none" else (None, None)
    want = ref.halo_dense(x, wq, wk, wv, *rel, **_halo_kwargs(layer))
    ref_loss = tf.reduce_sum(want * cotangent)
  np.testing.assert_allclose(got.numpy(), want.numpy(), atol=FLOAT32_TOL, rtol=FLOAT32_TOL)
  # The dense reference is itself checked against the loops for the same case.
  loops = ref.halo_loops(x.numpy(), *ref.layer_weights(layer), **_halo_kwargs(layer))
  np.testing.assert_allclose(want.numpy(), loops, atol=FLOAT32_TOL, rtol=FLOAT32_TOL)
  for source in [x] + weights:
    g_layer = tf.convert_to_tensor(tape.gradient(loss, source))
    g_ref = tf.convert_to_tensor(tape.gradient(ref_loss, source))
    assert g_layer is not None and g_ref is not None
    scale = max(1.0, float(np.abs(g_ref.numpy()).max()))
    np.testing.assert_allclose(g_layer.numpy(), g_ref.numpy(), atol=FLOAT32_TOL * scale,
                               rtol=FLOAT32_TOL)


@pytest.mark.parametrize("case", [
    dict(block_size=2, halo_size=1, strides=2, num_heads=2),
    dict(block_size=3, halo_size=1, strides=2, num_heads=1, window="centered"),
    dict(block_size=2, halo_size=1, strides=1, num_heads=2, rel_pos="split",
         mask_out_of_image=True),
], ids=_grid_id)
def test_numeric_gradient_float64(case):
  """Finite differences in float64: independent of any reference's own autodiff."""
  tf_keras.backend.set_floatx("float64")
  try:
    layer = HaloAttention(key_dim=4, value_dim=2 * case["num_heads"], dtype="float64", **case)
    x = tf.random.stateless_normal([1, 5, 6, 3], seed=[9, 9], dtype=tf.float64)
    layer(x)
    theoretical, numerical = tf.test.compute_gradient(lambda t: layer(t), [x], delta=1e-6)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6, rtol=1e-5)
    # Weights: tape gradient against central differences on a sample of kernel entries.
    cotangent = tf.random.stateless_normal(layer.compute_output_shape(x.shape), seed=[1, 9],
                                           dtype=tf.float64)
    for variable in (layer.key_value.kernel, layer.query.kernel, layer.rel_pos_h):
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * cotangent)
      analytic = tf.convert_to_tensor(tape.gradient(loss, variable)).numpy().reshape(-1)
      base = variable.numpy()
      for flat in np.random.default_rng(0).choice(base.size, size=min(8, base.size), replace=False):
        step = np.zeros(base.size)
        step[flat] = 1e-6
        variable.assign(base + step.reshape(base.shape))
        plus = float(tf.reduce_sum(layer(x) * cotangent))
        variable.assign(base - step.reshape(base.shape))
        minus = float(tf.reduce_sum(layer(x) * cotangent))
        variable.assign(base)
        np.testing.assert_allclose(analytic[flat], (plus - minus) / 2e-6, atol=1e-6, rtol=1e-5)
  finally:
    tf_keras.backend.set_floatx("float32")


@pytest.mark.parametrize("kernel_size,strides,block_size,mask", [
    (3, 1, 4, False), (3, 2, 2, False), (7, 1, 8, False), (7, 2, 4, True), (7, 1, 3, False),
])
def test_sasa_matches_centred_window_loops(kernel_size, strides, block_size, mask):
  layer = SASAAttention(key_dim=16, value_dim=8, num_heads=2, kernel_size=kernel_size,
                        strides=strides, block_size=block_size, mask_out_of_image=mask)
  x = _build(layer, [2, 11, 9, 5], seed=5)
  got = layer(x).numpy()
  want = ref.sasa_loops(x.numpy(), *ref.layer_weights(layer), heads=2, kernel_size=kernel_size,
                        stride=strides, mask_out_of_image=mask)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=FLOAT32_TOL, rtol=FLOAT32_TOL)
  # Half of each head's 8 channels embed rows, half columns.
  assert layer.rel_pos_h.shape == (2 * (block_size + 2 * (kernel_size // 2)) - 1, 4)


def _stem_weights(layer):
  """The stem layer's weights as the loop reference takes them (M value kernels split out)."""
  wq = layer.query.kernel.numpy()
  wkv = layer.key_value.kernel.numpy()
  wk, wv = wkv[:, :layer.key_dim], wkv[:, layer.key_dim:]
  dv = layer.value_dim
  wv_list = [wv[:, m * dv:(m + 1) * dv] for m in range(layer.value_mixtures)]
  return (wq, wk, wv_list, layer.mixture_row.numpy(), layer.mixture_col.numpy(),
          layer.mixture_nu.numpy())


def _build_stem(layer, shape, seed):
  x = tf.random.stateless_normal(shape, seed=[seed, 1], dtype=layer.dtype)
  layer(x)
  # Unit-scale mixture tables so the mixture is far from uniform and position matters.
  for i, table in enumerate((layer.mixture_row, layer.mixture_col, layer.mixture_nu)):
    table.assign(tf.random.stateless_normal(table.shape, seed=[seed, 20 + i], dtype=table.dtype))
  return x


STEM_CASES = [
    dict(pool_size=4, num_heads=4, value_mixtures=4, size=(8, 12)),  # whole windows
    dict(pool_size=4, num_heads=2, value_mixtures=3, size=(9, 10)),  # partial windows, masked
    dict(pool_size=3, num_heads=1, value_mixtures=2, size=(7, 5)),
]


@pytest.mark.parametrize("case", STEM_CASES, ids=_grid_id)
def test_attention_stem_matches_loops(case):
  case = dict(case)
  height, width = case.pop("size")
  channels, key_dim, value_dim = 3, 8 * case["num_heads"], 6 * case["num_heads"]
  layer = SpatiallyAwareAttention(key_dim=key_dim, value_dim=value_dim, **case)
  x = _build_stem(layer, [2, height, width, channels], seed=13)
  got = layer(x).numpy()
  want = ref.attention_stem_loops(x.numpy(), *_stem_weights(layer), heads=layer.num_heads,
                                  pool=layer.pool_size)
  assert got.shape == want.shape == (2, height, width, value_dim)
  # Float32 rounding: each output is a chain of sums of lengths C (projections), D (logits), p²
  # (softmax and weighted sum) and M (mixture); their relative errors add up to about
  # (C + D + 2p² + M)·eps, and O(1) logits at most amplify it a few times through exp.
  reductions = channels + key_dim // layer.num_heads + 2 * layer.pool_size**2 + layer.value_mixtures
  tol = 4 * reductions * np.finfo(np.float32).eps
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()))
  # Different positions in the window really get different mixtures, each summing to 1.
  mixture = layer.mixture_weights().numpy()
  np.testing.assert_allclose(mixture.sum(-1), 1.0, rtol=0, atol=layer.value_mixtures * 1e-7)
  assert mixture.shape == (layer.pool_size**2, layer.value_mixtures)
  assert np.ptp(mixture, axis=0).max() > 0.1


def test_attention_stem_gradients_match_finite_differences_of_loops():
  """Tape gradients (float64 layer) against central differences of the float64 loop reference."""
  tf_keras.backend.set_floatx("float64")
  try:
    layer = SpatiallyAwareAttention(key_dim=8, value_dim=4, num_heads=2, pool_size=3,
                                    value_mixtures=3, mixture_embedding_dim=4, dtype="float64")
    x = _build_stem(layer, [1, 5, 4, 3], seed=17)
    cotangent = np.random.default_rng(3).normal(size=(1, 5, 4, 4))
    variables = [layer.query.kernel, layer.key_value.kernel, layer.mixture_row,
                 layer.mixture_col, layer.mixture_nu]
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = tf.reduce_sum(layer(x) * cotangent)
    grads = [g.numpy() for g in tape.gradient(loss, [x] + variables)]

    def reference_loss(x_value, weights):
      return float(np.sum(ref.attention_stem_loops(x_value, *weights, heads=2, pool=3) *
                          cotangent))

    # Central differences: truncation O(step²) and rounding ~eps·|loss|/step; the bound below
    # allows 100 times the rounding term and a 1e-6 relative truncation error.
    step = 1e-6
    atol = 100 * np.finfo(np.float64).eps * max(1.0, abs(float(loss))) / step
    base_x, base_w = x.numpy(), _stem_weights(layer)
    for flat in range(base_x.size):  # every input entry
      delta = np.zeros(base_x.size)
      delta[flat] = step
      delta = delta.reshape(base_x.shape)
      numeric = (reference_loss(base_x + delta, base_w) -
                 reference_loss(base_x - delta, base_w)) / (2 * step)
      np.testing.assert_allclose(grads[0].reshape(-1)[flat], numeric, rtol=1e-6, atol=atol)
    rng = np.random.default_rng(0)
    for variable, grad in zip(variables, grads[1:]):
      base = variable.numpy()
      for flat in rng.choice(base.size, size=min(10, base.size), replace=False):
        delta = np.zeros(base.size)
        delta[flat] = step
        delta = delta.reshape(base.shape)
        values = []
        for sign in (1.0, -1.0):
          variable.assign(base + sign * delta)
          values.append(reference_loss(base_x, _stem_weights(layer)))
        variable.assign(base)
        np.testing.assert_allclose(grad.reshape(-1)[flat], (values[0] - values[1]) / (2 * step),
                                   rtol=1e-6, atol=atol, err_msg=variable.name)
  finally:
    tf_keras.backend.set_floatx("float32")


def test_attention_stem_config_round_trip_and_bad_arguments():
  layer = SpatiallyAwareAttention(key_dim=8, num_heads=2, pool_size=3, value_mixtures=2,
                                  kernel_regularizer=tf_keras.regularizers.L2(1e-4))
  x = _build_stem(layer, [1, 7, 8, 3], seed=5)
  clone = tf_keras.layers.deserialize(tf_keras.layers.serialize(layer))
  assert type(clone) is SpatiallyAwareAttention and clone.get_config() == layer.get_config()
  clone(x)
  clone.set_weights(layer.get_weights())
  np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())
  for kwargs, needle in ((dict(pool_size=0), "pool_size"), (dict(value_mixtures=1.5),
                                                             "value_mixtures"),
                         (dict(halo_size=1), "halo_size"), (dict(rel_pos="split"), "rel_pos")):
    with pytest.raises(ValueError, match=needle):
      SpatiallyAwareAttention(key_dim=8, **kwargs)


def test_sasa_result_does_not_depend_on_block_size():
  x = tf.random.stateless_normal([1, 10, 13, 4], seed=[2, 2])
  first = SASAAttention(key_dim=8, num_heads=2, kernel_size=5, block_size=1)
  want = first(x).numpy()
  for block in (3, 8):
    layer = SASAAttention(key_dim=8, num_heads=2, kernel_size=5, block_size=block)
    layer(x)
    layer.query.kernel.assign(first.query.kernel)
    layer.key_value.kernel.assign(first.key_value.kernel)
    # Tables are longer for larger windows; the offsets a 5×5 window reaches (±2) sit at the centre.
    for mine, theirs in ((layer.rel_pos_h, first.rel_pos_h), (layer.rel_pos_w, first.rel_pos_w)):
      pad = (mine.shape[0] - theirs.shape[0]) // 2
      mine.assign(np.pad(theirs.numpy(), [[pad, pad], [0, 0]]))
    np.testing.assert_allclose(layer(x).numpy(), want, atol=FLOAT32_TOL)


def test_global_attention_equals_plain_multi_head_attention():
  """b = map size, h = 0: one block, every pixel attends to every pixel."""
  size, heads, d = 6, 3, 4
  layer = HaloAttention(num_heads=heads, key_dim=heads * d, value_dim=heads * 5, block_size=size,
                        halo_size=0)
  x = _build(layer, [2, size, size, 7], seed=11)
  wq, wk, wv, rel_h, rel_w = ref.layer_weights(layer)
  xf = x.numpy().reshape(2, size * size, 7)
  q = (xf @ wq).reshape(2, -1, heads, d)
  k = (xf @ wk).reshape(2, -1, heads, d)
  v = (xf @ wv).reshape(2, -1, heads, 5)
  rows, cols = np.divmod(np.arange(size * size), size)
  rel = (np.einsum("bqnd,qkd->bnqk", q, rel_h[rows[None, :] - rows[:, None] + size - 1]) +
         np.einsum("bqnd,qkd->bnqk", q, rel_w[cols[None, :] - cols[:, None] + size - 1]))
  logits = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(d) + rel
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  want = np.einsum("bnqk,bknd->bqnd", weights, v).reshape(2, size, size, heads * 5)
  np.testing.assert_allclose(layer(x).numpy(), want, atol=FLOAT32_TOL, rtol=FLOAT32_TOL)


@pytest.mark.parametrize("layer_fn", [
    lambda: HaloAttention(num_heads=2, key_dim=8, block_size=4, halo_size=1, strides=2),
    lambda: HaloAttention(num_heads=2, key_dim=8, block_size=3, halo_size=1, strides=2),
    lambda: SASAAttention(key_dim=8, num_heads=2, kernel_size=3),
])
def test_unknown_batch_and_spatial_dims_and_xla(layer_fn):
  layer = layer_fn()
  eager_x = tf.random.stateless_normal([3, 13, 10, 4], seed=[1, 2])
  eager = layer(eager_x)
  traced = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 4])])
  concrete = traced.get_concrete_function()
  assert concrete.structured_outputs.shape.as_list() == [None, None, None, 8]
  np.testing.assert_allclose(traced(eager_x).numpy(), eager.numpy(), atol=FLOAT32_TOL)
  jitted = tf.function(layer, jit_compile=True)
  np.testing.assert_allclose(jitted(eager_x).numpy(), eager.numpy(), atol=FLOAT32_TOL)
  # A different size through the same unknown-shape trace.
  other = tf.random.stateless_normal([1, 7, 21, 4], seed=[3, 2])
  assert traced(other).shape == layer(other).shape == layer.compute_output_shape(other.shape)


def _softmax_dtypes(fn, spec):
  """Dtypes of the softmax's exponentials (the layer defers the normalisation, so no Softmax op)."""
  graph = tf.function(fn).get_concrete_function(spec).graph
  return [op.get_attr("T") for op in graph.get_operations() if op.type in ("Softmax", "Exp")]


def test_bfloat16_logit_storage_against_float32():
  """attend() with logits stored in bfloat16 (mixed_bfloat16) vs float32 on the same inputs, within
  the bound of block_attention's docstring: per query, u_bf16·max_k(2|position| + |q·k|) = Δ off
  each logit gives probabilities within exp(±2Δ), plus bfloat16 roundings of the weights, their
  sum, the weighted sum and the quotient (4 u_bf16) and float32 rounding over the K keys and D
  channels, all relative to Σ_k p_k|v_k|."""
  from official_halonet.layers import block_attention
  shape, window, dv = [2, 3, 4, 2], 3, 8  # B, Z, Q, N; K = window²
  q, k = (3.0 * tf.random.stateless_normal(shape[:2] + [n] + shape[3:] + [8], seed=[7, n])
          for n in (shape[2], window**2))
  v = tf.cast(tf.random.stateless_normal(shape[:2] + [window**2, shape[3], dv], seed=[8, 1]),
              tf.bfloat16)
  rows, cols = (2.0 * tf.random.stateless_normal([2, 3, 2, 4, window], seed=[9, n]) for n in (1, 2))
  got = block_attention.attend(q, k, v, rows, cols, storage=tf.bfloat16)
  want = block_attention.attend(q, k, tf.cast(v, tf.float32), rows, cols)
  assert got.dtype == tf.bfloat16
  content = np.einsum("bzqnd,bzknd->bznqk", q.numpy(), k.numpy())
  position = (rows.numpy()[..., :, None] + cols.numpy()[..., None, :]).reshape(content.shape)
  u = 2.0**-8
  delta = u * np.max(2 * np.abs(position) + np.abs(content), axis=-1)  # [B, Z, N, Q]
  p = np.exp(content + position - (content + position).max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  mass = np.einsum("bznqk,bzknd->bzqnd", p, np.abs(tf.cast(v, tf.float32).numpy()))
  relative = np.expm1(2 * delta) + 4 * u + tolerance.worst_case(window**2 + 8)
  bound = relative.transpose(0, 1, 3, 2)[..., None] * mass
  error = np.abs(tf.cast(got, tf.float32).numpy() - want.numpy())
  assert (error <= bound).all(), (error - bound).max()
  assert error.max() > 0  # the bfloat16 path did round


def test_mixed_bfloat16_logits_in_float32():
  x = tf.random.stateless_normal([2, 11, 12, 8], seed=[5, 6])
  full = HaloAttention(num_heads=2, key_dim=16, block_size=4, halo_size=1)
  full(x)
  tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    mixed = HaloAttention(num_heads=2, key_dim=16, block_size=4, halo_size=1)
    mixed(x)
  finally:
    tf_keras.mixed_precision.set_global_policy("float32")
  mixed.set_weights(full.get_weights())
  assert mixed.rel_pos_h.dtype == tf.float32
  y = mixed(x)
  assert y.dtype == tf.bfloat16
  y = tf.cast(y, tf.float32).numpy()
  assert np.isfinite(y).all()
  reference = full(x).numpy()
  error = np.abs(y - reference).max() / np.abs(reference).max()
  assert error < 0.05, error
  assert _softmax_dtypes(mixed, tf.TensorSpec([2, 11, 12, 8])) == [tf.float32]


def test_config_round_trip_gives_same_outputs():
  layer = HaloAttention(num_heads=2, key_dim=8, value_dim=4, block_size=4, halo_size=2, strides=2,
                        window="centered", mask_out_of_image=True, scale_rel_logits=True,
                        kernel_regularizer=tf_keras.regularizers.L2(1e-4))
  sasa = SASAAttention(key_dim=8, num_heads=2, kernel_size=3, strides=2)
  x = tf.random.stateless_normal([1, 9, 9, 3], seed=[8, 8])
  for original in (layer, sasa):
    original(x)
    config = tf_keras.layers.serialize(original)
    clone = tf_keras.layers.deserialize(config)
    assert type(clone) is type(original)
    assert clone.get_config() == original.get_config()
    clone(x)
    clone.set_weights(original.get_weights())
    np.testing.assert_array_equal(clone(x).numpy(), original(x).numpy())
  assert len(layer.losses) == 2  # the L2 penalty on the query and key/value kernels


def test_relative_tables_are_distinct():
  layer = HaloAttention(num_heads=2, key_dim=8, block_size=4, halo_size=1)
  layer(tf.zeros([1, 4, 4, 3]))
  assert not np.allclose(layer.rel_pos_h.numpy(), layer.rel_pos_w.numpy())


@pytest.mark.parametrize("kwargs,needle", [
    (dict(num_heads=2, key_dim=8, block_size=0), "block_size"),
    (dict(num_heads=2, key_dim=8, halo_size=-1), "halo_size"),
    (dict(num_heads=3, key_dim=8), "num_heads"),
    (dict(num_heads=2, key_dim=8, value_dim=5), "value_dim"),
    (dict(num_heads=0, key_dim=8), "num_heads"),
    (dict(num_heads=2, key_dim=8, strides=0), "strides"),
    (dict(num_heads=2, key_dim=8, block_size=2.5), "block_size"),
    (dict(num_heads=2, key_dim=8, window="round"), "window"),
    (dict(num_heads=2, key_dim=8, rel_pos="absolute"), "rel_pos"),
    (dict(num_heads=2, key_dim=6, rel_pos="split"), "even"),
    (dict(num_heads=2, key_dim=8, downsample="max_pool"), "downsample"),
])
def test_constructor_rejects_impossible_settings(kwargs, needle):
  with pytest.raises(ValueError, match=needle):
    HaloAttention(**kwargs)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(key_dim=16, kernel_size=4), "kernel_size"),
    (dict(key_dim=16, kernel_size=1), "kernel_size"),
    (dict(key_dim=16, halo_size=2), "halo_size"),
    (dict(key_dim=12, num_heads=4), "even"),
])
def test_sasa_constructor_rejects_impossible_settings(kwargs, needle):
  with pytest.raises(ValueError, match=needle):
    SASAAttention(**kwargs)


def test_no_extract_patches_in_package():
  package = pathlib.Path(official_halonet.__file__).parent
  offenders = [str(p) for p in package.rglob("*.py") if "extract_patches" in p.read_text()]
  assert not offenders, f"tf.image.extract_patches is not allowed (SPEC §2): {offenders}"


def test_benchmark_naive_baseline_is_the_same_math():
  """bench/attention.py's per-pixel-window baseline must compute what the layer computes."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "bench_attention", pathlib.Path(__file__).parents[1] / "bench" / "attention.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  layer = HaloAttention(num_heads=2, key_dim=8, block_size=4, halo_size=1)
  x = _build(layer, [2, 10, 13, 3], seed=12)
  np.testing.assert_allclose(bench._naive_windows(layer, x).numpy(), layer(x).numpy(),
                             atol=FLOAT32_TOL)
  glob = HaloAttention(num_heads=2, key_dim=8, block_size=6, halo_size=0)
  glob(tf.zeros([1, 6, 6, 3]))
  assert bench._global(glob, tf.zeros([1, 6, 6, 3])).shape == (1, 6, 6, 8)


def _exp_count(concrete) -> int:
  """Exp ops in a traced function and every function it calls (the softmax's exponentials)."""
  graphs = [concrete.graph] + [f.graph for f in concrete.graph._functions.values()
                               if hasattr(f, "graph")]
  return sum(op.type == "Exp" for g in graphs for op in g.get_operations())


@pytest.mark.parametrize("layer_fn", [
    lambda **kw: HaloAttention(num_heads=2, key_dim=8, value_dim=6, block_size=4, halo_size=1,
                               strides=2, **kw),
    lambda **kw: HaloAttention(num_heads=2, key_dim=8, block_size=4, halo_size=2, window="centered",
                               mask_out_of_image=True, **kw),
    lambda **kw: SASAAttention(key_dim=8, num_heads=2, kernel_size=3, strides=2, **kw),
    lambda **kw: SpatiallyAwareAttention(key_dim=8, value_dim=6, pool_size=2, num_heads=2, **kw),
], ids=["halo_strided", "halo_centered_masked", "sasa", "attention_stem"])
@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_recompute_gives_the_same_outputs_and_gradients(layer_fn, jit):
  """recompute=True re-runs the forward pass in the backward pass: the same numbers, and the
  gradient graph really holds a second softmax (the memory saving is measured by bench/compare.py)."""
  plain, recomputed = layer_fn(), layer_fn(recompute=True)
  x = _build(plain, [2, 9, 11, 5], seed=21)
  recomputed(x)
  recomputed.set_weights(plain.get_weights())
  assert recomputed.get_config()["recompute"] and not plain.get_config()["recompute"]
  cotangent = tf.random.stateless_normal(plain.compute_output_shape(x.shape), seed=[6, 6])

  def step_of(layer):
    def step(t):
      with tf.GradientTape() as tape:
        tape.watch(t)
        y = layer(t, training=True)
        loss = tf.reduce_sum(y * cotangent)
      grads = tape.gradient(loss, [t] + layer.trainable_variables)
      return [y] + [tf.convert_to_tensor(g) for g in grads]  # table gradients are IndexedSlices
    return tf.function(step, jit_compile=jit)

  steps = [step_of(plain), step_of(recomputed)]
  want, got = (s(x) for s in steps)
  names = ["output", "input"] + [v.name for v in plain.trainable_variables]
  assert len(got) == len(want) == len(names) > 3
  for name, g, w in zip(names, got, want):
    scale = max(1.0, float(np.abs(w.numpy()).max()))
    np.testing.assert_allclose(g.numpy(), w.numpy(), atol=FLOAT32_TOL * scale, rtol=0,
                               err_msg=name)
  exps = [_exp_count(s.get_concrete_function(tf.TensorSpec(x.shape))) for s in steps]
  assert exps[1] > exps[0] >= 1, exps
  # Inference (training=False or unset) never wraps the layer: same graph as without recompute.
  infer = [_exp_count(tf.function(l).get_concrete_function(tf.TensorSpec(x.shape)))
           for l in (plain, recomputed)]
  assert infer[0] == infer[1] >= 1, infer
