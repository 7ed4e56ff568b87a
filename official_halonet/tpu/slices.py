"""The Cloud TPU slice each published gin file is published for, on v4 and on v5e.

    SLICES["h7"] == {"v4": "v4-512", "v5litepod": "v5litepod-256"}
    python3 official_halonet/tpu/slices.py gin/h7.gin v4      # prints v4-512
    python3 official_halonet/tpu/slices.py --bindings gin/h7.gin v5litepod-256   # its SETTINGS

A file's global batch is split evenly over its slice's devices (tpu/chips.py counts them as
TensorFlow's TPUStrategy does: a v4 chip is one device, so v4-512 has 256); at that per-device
batch the train step, optimizer included, is to fit one device's HBM with at least 5% to spare,
by `--mode=tpu_check` on the pinned libtpu (bench/tpu_check.py; bench/results/tpu_check.json
holds the compiles, and the README's TPU table shows them). A global batch of 4096 fits the
largest models only on slices with more devices and fewer images each; v5e slices stop at 256
chips. Where a file needs more than its gin file to fit a generation's slice (recompute_attention,
or a smaller global batch), SETTINGS holds the bindings. Each gin file names its slices (and those
bindings) in its comment, and tpu_scripts take them as the default --accelerator-type, adding the
bindings on that slice, as tpu_check does (tests/test_tpu_slices.py checks the three agree).

Standard library only: tpu_scripts run it with the workstation's python3.
"""
import os
import sys
from typing import Dict, Tuple

GENERATIONS = ("v4", "v5litepod")
_32 = {"v4": "v4-256", "v5litepod": "v5litepod-128"}   # 4096 at 32 images per device
_16 = {"v4": "v4-512", "v5litepod": "v5litepod-256"}   # 4096 at 16 images per device

SLICES: Dict[str, Dict[str, str]] = {
    **{name: _32 for name in ("h0", "h1", "h2", "h3", "h4", "h5", "h7_c123", "halonet50",
                              "resnet50", "h4_i21k_pretrain", "sasa_resnet26", "sasa_resnet38",
                              "sasa_resnet50", "resnet50_se_halo_b8", "resnet101_se_halo_b8")},
    **{name: _16 for name in ("h6", "h7", "h7_c1", "h7_c12", "resnet50_se_halo_b32")},
    # ImageNet fine-tuning of H4-i21k, global batch 512: 16 and 8 images per device.
    "h4_i21k_finetune_384": {"v4": "v4-64", "v5litepod": "v5litepod-32"},
    "h4_i21k_finetune_512": {"v4": "v4-128", "v5litepod": "v5litepod-64"},
    # COCO, global batch 64: 8 images per device; b = 32 Mask R-CNN 4 (its 32×32 blocks take XLA's
    # attention: at 8 it leaves 1% of v5e's HBM); SASA's 7×7 windows (no fused kernel) 2 and 1.
    **{f"detection/{name}": {"v4": "v4-16", "v5litepod": "v5litepod-8"}
       for name in ("retinanet_r50_halo_b8", "maskrcnn_r50_halo_b8", "maskrcnn_r101_halo_b8")},
    "detection/maskrcnn_r50_halo_b32": {"v4": "v4-32", "v5litepod": "v5litepod-16"},
    "detection/retinanet_sasa_r50": {"v4": "v4-64", "v5litepod": "v5litepod-32"},
    "detection/retinanet_sasa_r50_attention_stem": {"v4": "v4-128", "v5litepod": "v5litepod-64"},
}


# What a file needs on top of its gin file to fit its published slice of a generation, as gin
# bindings: tpu_scripts and tpu_check add them when they run it on that slice. H7 on v5e: at 4096,
# 16 images per device on the largest v5e slice, its step leaves less than 5% of HBM and
# recompute_attention adds memory (bench/results/tpu_check_variants.json; the README's TPU section
# has the figures); a global batch of 2048 fits, and the schedule follows the batch.
SETTINGS: Dict[str, Dict[str, Tuple[str, ...]]] = {
    "h7": {"v5litepod": ("experiment.global_batch_size = 2048",)},
}


def name_of(gin_file: str) -> str:
  """'gin/h7.gin', '/path/to/project/gin/h7.gin', 'h7.gin' or 'h7' -> 'h7';
  'gin/detection/x.gin' -> 'detection/x'."""
  name = gin_file[:-len(".gin")] if gin_file.endswith(".gin") else gin_file
  name = name.replace(os.sep, "/")
  if name.startswith(("gin/", "./gin/")):
    return name.split("gin/", 1)[1]
  return name.rsplit("/gin/", 1)[1] if "/gin/" in name else name


def published_slice(gin_file: str, generation: str) -> str:
  """The slice `gin_file` is published for on `generation`; KeyError names what is known."""
  name = name_of(gin_file)
  if generation not in GENERATIONS:
    raise KeyError(f"no published slices for generation {generation!r}: one of "
                   f"{', '.join(GENERATIONS)}")
  if name not in SLICES:
    raise KeyError(f"{gin_file} is not a published gin file (official_halonet/tpu/slices.py)")
  return SLICES[name][generation]


def published_settings(gin_file: str, topology: str) -> Tuple[str, ...]:
  """The bindings `gin_file` is published with on `topology` (none where that is not its published
  slice); KeyError for a file that is not published."""
  generation = topology.rsplit("-", 1)[0]
  if generation not in GENERATIONS or published_slice(gin_file, generation) != topology:
    return ()
  return SETTINGS.get(name_of(gin_file), {}).get(generation, ())


def main(argv) -> int:
  """slices.py GIN_FILE GENERATION: its slice; slices.py --bindings GIN_FILE SLICE: the bindings
  it is published with there, one per line."""
  args = argv[2:] if argv[1:2] == ["--bindings"] else argv[1:]
  if len(args) != 2:
    print("usage: slices.py GIN_FILE GENERATION (v4 or v5litepod) | slices.py --bindings GIN_FILE "
          "SLICE", file=sys.stderr)
    return 2
  try:
    if argv[1] == "--bindings":
      for binding in published_settings(*args):
        print(binding)
    else:
      print(published_slice(*args))
  except KeyError as e:
    print(e.args[0], file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
