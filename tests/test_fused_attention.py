"""The fused attention kernel (kernels/halo_attention.py) through layers/fused_attention.py.

On the CPU the kernel runs in Pallas's interpreter (fused_attention='cpu'): the same kernel body the TPU
compiles, so HaloAttention with it is checked against the independent per-pixel reference at the
float32 bound of test_attention_layers. For the TPU (fused_attention='tpu'), the compiler's own figures:
the kernels compile for v5e, and the logits no longer go through HBM.
"""
import os

import numpy as np
import pytest

import official_halonet  # noqa: F401  (selects tf_keras before TensorFlow resolves tf.keras)
import tensorflow as tf
import tf_keras

from official_halonet.kernels import library
from official_halonet.kernels import tpu_software
from official_halonet.kernels.core import DoesNotFit
from official_halonet.layers import HaloAttention
from official_halonet.layers import SASAAttention
from official_halonet.layers import fused_attention
from official_halonet.models import config as model_config
from official_halonet.models import overrides as model_overrides
from official_halonet.tpu import chips
from official_halonet.tpu import compiler
import attention_reference as ref
import tolerance

CASES = [
    dict(num_heads=2, block_size=4, halo_size=1, size=(13, 17)),
    dict(num_heads=2, block_size=4, halo_size=2, strides=2, size=(12, 12)),
    dict(num_heads=1, block_size=3, halo_size=1, strides=2, size=(9, 10)),  # avg-pooled after
    dict(num_heads=2, block_size=4, halo_size=1, scale_rel_logits=True, size=(8, 8)),
    dict(num_heads=2, block_size=4, halo_size=1, rel_pos="split", strides=2, size=(8, 12)),
    dict(num_heads=1, block_size=8, halo_size=2, strides=2, size=(16, 13)),  # 4×4 map layout
    # SASA's centred 3×3 and 5×5 windows (split tables; avg-pooled after when strided).
    dict(num_heads=2, block_size=4, halo_size=1, window="centered", rel_pos="split", size=(9, 10)),
    dict(num_heads=2, block_size=4, halo_size=2, window="centered", rel_pos="split", strides=2,
         downsample="avg_pool", size=(8, 8)),
]
# Same chain as test_attention_layers: 8 input channels at most, 4 channels per head, 8x8 windows.
FLOAT32_TOL = tolerance.random_walk(tolerance.attention_chain(in_channels=5, head_dim=8, window=8))


def _layer(case, **extra):
  case = dict(case)
  size = case.pop("size")
  return HaloAttention(key_dim=4 * case["num_heads"], value_dim=3 * case["num_heads"], **case,
                       **extra), size


def _halo_kwargs(layer):
  return dict(heads=layer.num_heads, block=layer.block_size, halo=layer.halo_size,
              stride=layer.strides, pool_after=layer.pool_after, rel_mode=layer.rel_pos,
              scale_rel=layer.scale_rel_logits, centered=layer.window == "centered")


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_fused_layer_matches_per_pixel_loops_with_its_gradients(case):
  """Output against the per-pixel loops; gradients of input and every variable against the same
  layer on XLA's path (itself checked against the dense reference in test_attention_layers)."""
  layer, (height, width) = _layer(case, fused_attention="cpu")
  plain, _ = _layer(case)
  x = tf.random.stateless_normal([2, height, width, 5], seed=[3, 1])
  layer.build(x.shape)
  plain.build(x.shape)
  layer.set_weights([tf.random.stateless_normal(w.shape, seed=[i, 2]) * 0.5
                     for i, w in enumerate(layer.weights)])
  plain.set_weights(layer.get_weights())
  cotangent = tf.random.stateless_normal(layer.compute_output_shape(x.shape), seed=[4, 4])
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    got, want = layer(x), plain(x)
    losses = [tf.reduce_sum(y * cotangent) for y in (got, want)]
  loops = ref.halo_loops(x.numpy(), *ref.layer_weights(layer), **_halo_kwargs(layer))
  np.testing.assert_allclose(got.numpy(), loops, atol=FLOAT32_TOL, rtol=FLOAT32_TOL)
  names = ["input"] + [v.name for v in layer.trainable_variables]
  for name, mine, theirs in zip(names, [x] + layer.trainable_variables,
                                [x] + plain.trainable_variables):
    g_fused = tf.convert_to_tensor(tape.gradient(losses[0], mine)).numpy()
    g_plain = tf.convert_to_tensor(tape.gradient(losses[1], theirs)).numpy()
    # Both sides sum over every output pixel the source reaches: 2 images of at most 17x17.
    tolerance.assert_close(g_fused, g_plain, tolerance.attention_chain(5, 8, 8) + 2 * 17 * 17,
                           err_msg=name)


@pytest.mark.parametrize("block, blocks_y", [(2, 3), (4, 2)], ids=["blocked", "map_layout"])
def test_bfloat16_inputs_against_float64_at_the_bfloat16_bound(block, blocks_y):
  """bfloat16 q and k/v map, float32 tables holding bfloat16 values (so both sides see the same
  inputs; the map's filler columns, which the kernel reads and must mask, hold values too), with
  q and the output block by block (2×2 queries a block) and as maps (4×4, two blocks a row).
  The kernel rounds scale·q to bfloat16 for the q·k product (u = 2^-8 relative per element) and
  each position factor q·T once (u of it, after a float32 sum of D products), which moves each
  logit by at most Δ = u·(Σ_d |scale·q_d·k_d| + |rows| + |cols|) + the float32 sums' share, so
  each probability by a factor within exp(±2·max_k Δ); then it rounds the probabilities before P·v
  and the output (u each); logits, softmax and sums are float32 (rounding over the K + D + K
  chain); all relative to Σ_k p_k |v_k|."""
  core = fused_attention.Core(batch=2, blocks_x=1, blocks_y=blocks_y, block=block, halo=1,
                              queries=block**2, heads=2, key_width=8, value_width=4,
                              scale=8**-0.5, position_width=8)
  assert core.row > core.window and core.map_layout == (block == 4)  # filler keys read
  q, kv_map, tables = (tf.cast(2.0 * tf.random.stateless_normal(core.shapes()[name], seed=[11, i]),
                               tf.bfloat16) for i, name in enumerate(fused_attention.INPUTS))
  got = fused_attention.attend(q, kv_map, tf.cast(tables, tf.float32), core, "cpu")
  assert got.dtype == tf.bfloat16
  q, kv_map, tables = (t.numpy().astype(np.float64) for t in (q, kv_map, tables))
  z, queries, n, d, w, keys = (core.blocks, core.queries, core.heads, core.key_width, core.window,
                               core.keys)
  if core.map_layout:  # [B, bq, Y·bq, C] -> [Z, Q, C], as the loops below want
    blocks = lambda a: a.reshape(2, block, blocks_y, block, -1).transpose(0, 2, 1, 3, 4).reshape(
        z, queries, -1)
  else:
    blocks = lambda a: a
  q, got = blocks(q), blocks(tf.cast(got, tf.float64).numpy())
  kv = np.stack([kv_map[image, 0:w, block * y:block * y + w].reshape(keys, -1)
                 for image in range(2) for y in range(blocks_y)])  # the windows, row-major
  k = kv[..., :n * d].reshape(z, keys, n, d)
  v = kv[..., n * d:n * (d + core.value_width)].reshape(z, keys, n, core.value_width)  # the rest:
  # channels that pad the map to whole lane tiles (random here too: the kernel must not read them)
  heads = q.reshape(z, block, block, n, d)  # [Z, query row i, query column j, N, D]
  by_row = tables[:block * w].reshape(block, w, d)
  by_col = tables[block * w:].reshape(block, w, d)
  factor = lambda q_, r_, c_: (
      np.einsum("zijnd,iud->zijnu", q_, r_).reshape(z, queries, n, w, 1),
      np.einsum("zijnd,jcd->zijnc", q_, c_).reshape(z, queries, n, 1, w))
  rows, cols = factor(heads, by_row, by_col)
  position = sum(factor(np.abs(heads), np.abs(by_row), np.abs(by_col))).reshape(
      z, queries, n, keys)
  logits = (core.scale * np.einsum("zqnd,zknd->zqnk", q.reshape(z, queries, n, d), k)
            + (rows + cols).reshape(z, queries, n, keys))
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  want = np.einsum("zqnk,zknd->zqnd", p, v).reshape(z, queries, -1)
  mass = np.einsum("zqnk,zknd->zqnd", p, np.abs(v)).reshape(z, queries, n, -1)
  u = 2.0**-8
  content = np.einsum("zqnd,zknd->zqnk", np.abs(core.scale * q.reshape(z, queries, n, d)),
                      np.abs(k))
  delta = (u * (content + (np.abs(rows) + np.abs(cols)).reshape(z, queries, n, keys))
           + tolerance.worst_case(d) * position).max(-1)  # [Z, Q, N]
  relative = np.expm1(2 * delta) + 2 * u + tolerance.worst_case(2 * keys + d)
  bound = (relative[..., None] * mass).reshape(z, queries, -1)
  error = np.abs(got - want)
  assert (error <= bound).all(), (error - bound).max()
  assert error.max() > 0  # the probabilities were rounded


def _train_step_hlo(fused, block, strides, window="block"):
  """HLO of loss and gradients of one halo layer (H1 stage-1 shape at batch 4; with a centred
  window SASA-ResNet's 7×7 one, split tables), mixed_bfloat16."""
  tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    layer = HaloAttention(num_heads=4, key_dim=64, value_dim=64, block_size=block, halo_size=3,
                          strides=strides, fused_attention=fused, window=window,
                          rel_pos="split" if window == "centered" else "factorized")
    spec = tf.TensorSpec([4, 64, 64, 64], tf.bfloat16)
    layer.build(spec.shape)

    def step(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.cast(layer(x, training=True), tf.float32)**2)
      return tape.gradient(loss, [x] + layer.trainable_variables)

    return tf.function(step, jit_compile=True).experimental_get_compiler_ir(spec)(
        stage="hlo_serialized")
  finally:
    tf_keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("block, strides, window", [(8, 1, "block"), (8, 2, "block"),
                                                    (10, 1, "block"), (8, 1, "centered")])
def test_the_kernels_compile_for_tpu_and_keep_the_logits_off_hbm(tmp_path, block, strides,
                                                                 window):
  """The fused layer's train step compiles for v5e with its two kernels (forward, backward): 8×8
  query blocks in the map layout, 4×4 (strides=2: rows of 4 re-blocked), H3-H7's 10×10 blocks
  (q block by block; windows starting mid-tile, read from the tile before) and SASA's centred 7×7
  windows on blocks of 8 (its mask a constant bias on the position terms). The compiler counts
  their FLOPs at least at the analytic count, and at H1's 8×8 blocks the step moves less than half
  the bytes of XLA's (whose float32 logits alone, written once, are 4·64·64·4·196·4 = 51 MB)."""
  generation = chips.GENERATIONS["v5litepod"]
  text = str(tmp_path / "fused.txt")
  fused = compiler.compile_for(_train_step_hlo("tpu", block, strides, window), generation, text)
  assert fused["compiled"], fused.get("error")
  with open(text, encoding="utf-8") as f:
    assert f.read().count('custom_call_target="tpu_custom_call"') == 2
  blocks = -(-64 // block)
  core = fused_attention.Core(batch=4, blocks_x=blocks, blocks_y=blocks, block=block, halo=3,
                              queries=(block // strides)**2, heads=4, key_width=16,
                              value_width=16, scale=0.25,
                              position_width=8 if window == "centered" else 16,
                              centered=window == "centered")
  assert core.map_layout == (block == 8)
  assert fused["flops"] >= core.flops() + core.flops(backward=True)
  assert fused["while_loops"] == 0
  if (block, strides, window) == (8, 1, "block"):  # XLA's path, compiled once: H1's layer
    plain = compiler.compile_for(_train_step_hlo("none", block, strides, window), generation)
    assert plain["compiled"], plain.get("error")
    assert fused["bytes_accessed"] < 0.5 * plain["bytes_accessed"], (fused, plain)


def test_fused_attention_refuses_what_the_kernel_does_not_compute():
  for kwargs in (dict(window="centered", strides=2), dict(mask_out_of_image=True),
                 dict(rel_pos="none")):
    with pytest.raises(ValueError, match="fused_attention='tpu' computes unmasked block windows"):
      HaloAttention(num_heads=2, key_dim=8, fused_attention="tpu", **kwargs)
  with pytest.raises(ValueError,
                     match=r"fused_attention must be one of \(None, 'none', 'tpu', 'cpu'\)"):
    HaloAttention(num_heads=2, key_dim=8, fused_attention="gpu")
  with pytest.raises(model_overrides.OverrideError, match="fused_attention must be one of"):
    model_overrides.resolve(model_config.HaloNetConfig(model_id="h0", fused_attention="TPU"))


def test_free_batch_falls_back_to_xla_and_round_trips_its_config():
  """Keras's symbolic build and free-batch inputs have no static shape for a kernel: the layer
  computes the same map on XLA's path there; fused_attention is part of its config, and a config
  saved under its former name, fused_core, still loads."""
  layer = HaloAttention(num_heads=2, key_dim=8, block_size=4, halo_size=1, fused_attention="cpu")
  inputs = tf_keras.Input([8, 8, 4])
  assert layer(inputs).shape.as_list() == [None, 8, 8, 8]
  config = layer.get_config()
  assert "fused_core" not in config
  assert HaloAttention.from_config(config).fused_attention == "cpu"
  config["fused_core"] = config.pop("fused_attention")
  assert HaloAttention.from_config(config).fused_attention == "cpu"
  old = SASAAttention(key_dim=8, num_heads=2).get_config()
  old["fused_core"] = old.pop("fused_attention")
  assert SASAAttention.from_config(old).fused_attention is None


def test_modules_are_cached_on_disk_and_a_jax_other_than_the_pinned_one_is_named(tmp_path,
                                                                                 monkeypatch):
  monkeypatch.setenv("OFFICIAL_HALONET_KERNEL_CACHE", str(tmp_path))
  monkeypatch.setattr(library, "_MODULES", {})
  core = dict(batch=1, blocks_x=1, blocks_y=2, block=2, halo=1, queries=4, heads=1, key_width=4,
              value_width=4, scale=0.5, position_width=4)
  data, version = library.module("forward", core, "float32", "cpu")
  assert data and version >= 9 and len(os.listdir(tmp_path)) == 1
  monkeypatch.setattr(library, "_MODULES", {})
  monkeypatch.setattr(library.subprocess, "run", None)  # no export can run: read from the disk
  assert library.module("forward", core, "float32", "cpu") == (data, version)
  installed = tpu_software.installed
  monkeypatch.setattr(tpu_software, "installed",
                      lambda package: "0.0.0" if package == "jax" else installed(package))
  with pytest.raises(library.ExportError, match=r"jax 0\.0\.0 is installed, but this project "
                     r"runs TPUs with jax 0\.6\.0"):  # another JAX is another module
    library.module("forward", core, "float32", "cpu")
  with pytest.raises(ValueError, match="platform must be one of"):
    library.module("forward", core, "float32", "gpu")


def test_shapes_the_core_does_not_expect_are_named():
  core = fused_attention.Core(batch=1, blocks_x=1, blocks_y=2, block=2, halo=1, queries=4,
                              heads=1, key_width=4, value_width=4, scale=0.5, position_width=4)
  q, _, tables = (tf.zeros(core.shapes()[name]) for name in fused_attention.INPUTS)
  with pytest.raises(ValueError, match=r"kv_map has shape \(1, 4, 6, 8\)"):
    fused_attention.attend(q, tf.zeros([1, 4, 6, 8]), tables, core, "cpu")
  with pytest.raises(ValueError, match="tables must be float32, got bfloat16"):
    fused_attention.attend(q, tf.zeros(core.shapes()["kv_map"]), tf.cast(tables, tf.bfloat16),
                           core, "cpu")
  big = fused_attention.Core(batch=1, blocks_x=1, blocks_y=2, block=32, halo=3, queries=1024,
                             heads=8, key_width=16, value_width=16, scale=0.25, position_width=16)
  with pytest.raises(DoesNotFit, match=r"^fused attention: a block of 1024 queries against a 38×38 "
                     r"window needs [0-9.]+ MiB of VMEM per grid step, over the TPU compiler's "
                     r"16 MiB$"):  # the kernel's side names no setting
    big.check_fits(2)
  layer = HaloAttention(num_heads=8, key_dim=128, block_size=32, halo_size=3,
                        fused_attention="cpu")
  with pytest.raises(ValueError, match=r"a block of 1024 queries against a 38×38 window needs "
                     r"[0-9.]+ MiB of VMEM per grid step, over the TPU compiler's 16 MiB; use "
                     r"fused_attention='none' for this model\n"):  # before any kernel is made
    layer(tf.zeros([1, 32, 64, 4]))
  with pytest.raises(ValueError, match="queries=6 per block is not a square"):
    fused_attention.Core(batch=1, blocks_x=1, blocks_y=2, block=2, halo=1, queries=6, heads=1,
                         key_width=4, value_width=4, scale=0.5, position_width=4)


def test_a_run_with_the_tpu_kernel_exports_with_xlas_attention():
  """fused_attention is a gin setting of the run; the SavedModel export rebuilds the model without
  it (the TPU kernel serves nowhere else), leaving the run's config as it was."""
  from official_halonet.export import saved_model  # pylint: disable=g-import-not-at-top
  from official_halonet.models import attention_maps  # pylint: disable=g-import-not-at-top
  from official_halonet.training import runner  # pylint: disable=g-import-not-at-top
  demo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin",
                      "demo.gin")
  options = runner.RunOptions(gin_files=[demo],
                              gin_bindings=["experiment.fused_attention = 'tpu'"])
  config, _ = saved_model.load_config(options)
  assert config.task.model.backbone.halonet.fused_attention == "tpu"
  layers = attention_maps.attention_layers(saved_model.build_model(config))
  halo = [layer for layer in layers if type(layer) is HaloAttention]  # pylint: disable=C0123
  assert halo
  assert all(layer.fused_attention is None for layer in layers)
  assert config.task.model.backbone.halonet.fused_attention == "tpu"
