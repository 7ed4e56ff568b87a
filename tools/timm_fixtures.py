"""Reference weights and logits of timm's HaloNets, for checking official_halonet.convert_timm.

Runs where PyTorch and timm are installed (never a dependency of the project; the side environment
of /work/shared/tools/timm_env.sh has both):

    PYTHONPATH=/tmp/timm-tvstub /tmp/timm-venv/bin/python tools/timm_fixtures.py \\
        --out_dir=tests/fixtures/timm --mini --images astronaut.png coffee.png chelsea.png
    PYTHONPATH=/tmp/timm-tvstub /tmp/timm-venv/bin/python tools/timm_fixtures.py \\
        --out_dir=/tmp/timm_full --images astronaut.png coffee.png chelsea.png

For each model (timm's halonet_h1, halonet26t, sehalonet33ts, halonet50ts, eca_halonext26ts; with
--mini the narrow '<name>_mini' versions of official_halonet.models.specs, 10 classes, 128×128) it

  1. builds timm's model with seeded random weights (no pretrained weights are downloaded), gives
     every BatchNorm a random scale and shift (including the zero-initialised last one of each
     residual branch) and running statistics measured on the photos in train mode, then scales
     the classifier so the logits have a standard deviation of about 1 (--logit_std);
  2. preprocesses the photos as timm's eval transform does for that model (resize the short side
     to floor(size / crop_pct) with PIL's filter named by `interpolation`, center crop to size;
     kept as uint8) and normalises them with the model's mean / std in float32 NumPy;
  3. writes <name>.safetensors (the state dict, as timm's published model.safetensors files hold
     it; the reduced models' weights are rounded to float16 values first and stored as float16,
     so the file holds exactly the model that produced the logits, at half the size), inputs_<size>_<crop_pct>_<interpolation>.npz (the uint8 crops, shared by the models
     with the same preprocessing) and <name>.json (logits in eval mode in float32 and, from a
     float64 copy of the model, the float64 logits and timm's own float32 rounding error
     max |float32 - float64|; top-5, parameter count, preprocessing, versions).

Also writes full_width_parameters.json: the parameter count of each full-size model (1000 classes).
tools/timm_parity.py (project side, no PyTorch) converts each file and compares.
"""
import argparse
import copy
import dataclasses
import json
import math
import os
import sys

import numpy as np
import torch
import timm
from timm.models import byoanet, byobnet
from PIL import Image
from safetensors.torch import save_file

MODELS = ("halonet_h1", "halonet26t", "sehalonet33ts", "halonet50ts", "eca_halonext26ts")
MINI_CLASSES = 10
MINI_SIZE = 128
RESIDUAL_BRANCH_END = "conv3_1x1.bn"
FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def _mini_attn_kwargs(kwargs):
  """timm's halo settings for the reduced models: b 8 -> 4, h 3 -> 2 and 2 -> 1, heads /4 (min 1,
  default 8 -> 2), dim_head 16 -> 8."""
  if kwargs is None:
    return None
  out = dict(kwargs, block_size=4, halo_size=kwargs["halo_size"] - 1,
             num_heads=max(1, kwargs.get("num_heads", 8) // 4))
  if "dim_head" in kwargs:
    out["dim_head"] = kwargs["dim_head"] // 2
  return out


# Blocks kept per stage (the first ones, so interleaved patterns keep their order); models not
# listed keep every block.
MINI_DEPTHS = {"halonet_h1": (2, 2, 3, 2), "halonet50ts": (2, 4, 4, 2)}


def _mini_block(block, depth):
  """One ByoBlockCfg reduced: bottleneck widths / 8 (a ratio-1 block) or, with the bottleneck
  ratio doubled, output widths / 16 (bottleneck widths / 8 again); group size 8."""
  narrow = block.br < 1
  return dataclasses.replace(
      block, c=block.c // (16 if narrow else 8), br=block.br * 2 if narrow else block.br,
      d=depth or block.d, gs=8 if block.gs else block.gs,
      self_attn_kwargs=_mini_attn_kwargs(block.self_attn_kwargs))


def mini_config(name):
  """timm's ByoModelCfg of `name` reduced as the '<name>_mini' rows of
  official_halonet.models.specs: see _mini_block, stem / 4, final features / 16, halo settings of
  _mini_attn_kwargs, the depths of MINI_DEPTHS."""
  cfg = byoanet.model_cfgs[name]
  depths = MINI_DEPTHS.get(name, (None,) * len(cfg.blocks))
  stages = []
  for stage, depth in zip(cfg.blocks, depths):
    if isinstance(stage, tuple):  # interleaved: one cfg per block
      stages.append(tuple(_mini_block(b, None) for b in stage[:depth]))
    else:
      stages.append(_mini_block(stage, depth))
  return dataclasses.replace(
      cfg, blocks=tuple(stages), stem_chs=cfg.stem_chs // 4,
      num_features=cfg.num_features // 16,
      self_attn_kwargs=_mini_attn_kwargs(cfg.self_attn_kwargs))


def build(name, mini):
  if mini:
    return byobnet.ByobNet(mini_config(name), num_classes=MINI_CLASSES)
  return timm.create_model(name, pretrained=False)


def preprocess(path, size, crop_pct, interpolation):
  """timm's eval transform on a PIL image, up to the uint8 crop: [size, size, 3] uint8."""
  image = Image.open(path).convert("RGB")
  scale = math.floor(size / crop_pct)
  width, height = image.size
  if width <= height:
    new = (scale, int(scale * height / width))
  else:
    new = (int(scale * width / height), scale)
  image = image.resize(new, FILTERS[interpolation])
  left = int(round((new[0] - size) / 2.0))
  top = int(round((new[1] - size) / 2.0))
  return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def normalise(crops, mean, std):
  """uint8 [N, S, S, 3] -> float32 [N, S, S, 3], (x / 255 - mean) / std in float32."""
  x = crops.astype(np.float32) / np.float32(255)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def randomise(model, images, generator, logit_std):
  """Random BN affine parameters (scale U(0.5, 1.5), U(0.1, 0.3) at the end of residual branches;
  shift N(0, 0.2²)), BN running statistics measured on `images` (train-mode passes, cumulative
  average) and moved a little off (mean by 0.1 std, variance by up to ±10%), then the classifier
  scaled to logits of standard deviation ~`logit_std`."""
  named = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
  norms = [m for _, m in named]
  with torch.no_grad():
    for name, bn in named:
      # The last BN of a residual branch scales it down, as in a trained network (timm
      # initialises it to 0): each block stays a moderate change of its input, which keeps a deep
      # random network out of the chaotic regime where float32 rounding grows layer by layer.
      low, high = (0.1, 0.3) if name.endswith(RESIDUAL_BRANCH_END) else (0.5, 1.5)
      bn.weight.copy_(low + (high - low) * torch.rand(bn.weight.shape, generator=generator))
      bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=generator))
      bn.reset_running_stats()
      bn.momentum = None  # cumulative moving average
    model.train()
    for image in images:
      model(image[None])
    model.eval()
    for bn in norms:  # a little off the measured statistics, as trained running averages are
      noise = torch.randn(bn.running_mean.shape, generator=generator)
      bn.running_mean.add_(0.1 * bn.running_var.sqrt() * noise)
      bn.running_var.mul_(0.9 + 0.2 * torch.rand(bn.running_var.shape, generator=generator))
      bn.momentum = 0.1
    fc = model.get_classifier()
    logits = model(images)
    fc.weight.mul_(logit_std / float(logits.std()))
    fc.bias.copy_(0.1 * torch.randn(fc.bias.shape, generator=generator))


def round_to_float16(model):
  """Rounds every floating-point weight and buffer to a float16 value (kept in float32), so a
  float16 file holds the model exactly: the reduced fixtures are stored that way (half the size)."""
  with torch.no_grad():
    for tensor in list(model.parameters()) + list(model.buffers()):
      if tensor.is_floating_point():
        tensor.copy_(tensor.half().float())


def write(name, mini, image_paths, out_dir, seed, logit_std):
  torch.manual_seed(seed)
  generator = torch.Generator().manual_seed(seed)
  model = build(name, mini)
  pretrained = timm.create_model(name, pretrained=False).pretrained_cfg
  size = MINI_SIZE if mini else pretrained["input_size"][1]
  crop_pct, interpolation = pretrained["crop_pct"], pretrained["interpolation"]
  mean, std = pretrained["mean"], pretrained["std"]
  crops = np.stack([preprocess(p, size, crop_pct, interpolation) for p in image_paths])
  x = torch.from_numpy(normalise(crops, mean, std)).permute(0, 3, 1, 2).contiguous()
  randomise(model, x, generator, logit_std)
  if mini:
    round_to_float16(model)
  with torch.no_grad():
    logits = model(x).numpy()
    exact = copy.deepcopy(model).double()(x.double()).numpy()  # float64 reference
  key = f"{name}_mini" if mini else name
  state = {k: (v.half() if mini and v.is_floating_point() else v).detach().contiguous()
           for k, v in model.state_dict().items()}
  save_file(state, os.path.join(out_dir, f"{key}.safetensors"))
  inputs = f"inputs_{size}_{crop_pct}_{interpolation}.npz"  # shared by models that agree
  np.savez_compressed(os.path.join(out_dir, inputs), crops=crops)
  meta = dict(
      model=key, timm_model=name, num_classes=int(logits.shape[1]),
      parameters=int(sum(p.numel() for p in model.parameters())),
      image_size=size, crop_pct=crop_pct, interpolation=interpolation, mean=list(mean),
      std=list(std), inputs=inputs, images=[os.path.basename(p) for p in image_paths],
      logits=logits.astype(float).tolist(), top5=np.argsort(-logits, axis=1)[:, :5].tolist(),
      logits_float64=exact.tolist(),
      float32_error=float(np.max(np.abs(logits.astype(np.float64) - exact))),
      seed=seed, timm_version=timm.__version__, torch_version=torch.__version__.split("+")[0])
  with open(os.path.join(out_dir, f"{key}.json"), "w") as f:
    json.dump(meta, f, indent=1)
  print(f"{key}: {meta['parameters']} parameters, logits std {logits.std():.2f}, timm's "
        f"float32 vs float64 {meta['float32_error']:.1e} -> {out_dir}", flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--images", nargs="+", required=True, help="RGB photos (PNG / JPEG)")
  parser.add_argument("--mini", action="store_true", help="the reduced-width '<name>_mini' models")
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--logit_std", type=float, default=1.0,
                      help="scale of the logits; float32 rounding errors scale with it")
  args = parser.parse_args(argv)
  os.makedirs(args.out_dir, exist_ok=True)
  torch.set_num_threads(1)
  for name in args.models:
    write(name, args.mini, args.images, args.out_dir, args.seed, args.logit_std)
  counts = {name: int(sum(p.numel() for p in timm.create_model(name).parameters()))
            for name in MODELS}
  with open(os.path.join(args.out_dir, "full_width_parameters.json"), "w") as f:
    json.dump(dict(counts, timm_version=timm.__version__), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
