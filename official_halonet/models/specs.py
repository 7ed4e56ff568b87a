"""The named models: one `ModelSpec` per configuration the HaloNet and SASA papers define.

Stage i (i = 0..3, endpoints '2'..'5') has bottleneck width d_i = base_width · 2^i and output width
r_b · d_i. Every block is 1×1 conv to d_i -> the stage's spatial op -> 1×1 conv to r_b · d_i, with a
residual connection; the spatial op is

  'halo'  halo attention, q and k d_i wide, v r_v · d_i wide (so the last 1×1 reads r_v · d_i),
  'sasa'  SASA k×k attention (k = sasa_kernel, 8 heads), average-pool downsampling,
  'conv'  a 3×3 convolution (ResNet bottleneck; with squeeze-excitation in the hybrids).

`paper_params` / `paper_top1` are the numbers the papers report (millions / %); tests compare the
parameter count the code builds against them (docs/model_sizes.md; H3 and the H7-C123 hybrid
differ from the paper, docs/h3_parameters.md and docs/h7_hybrid_parameters.md). A hybrid's conv
block is 1×1 to d, 3×3 conv d -> d, SE on d at 1/16, 1×1 to r_b·d.

The timm rows ('halonet_h1', 'halonet26t', 'sehalonet33ts', 'halonet50ts', 'eca_halonext26ts') are
the HaloNets trained in PyTorch by timm, whose weights official_halonet.convert_timm imports. They
use the generalisations below: a per-stage block pattern (conv bottlenecks interleaved with halo
blocks), per-stage output ratios, grouped 3×3 convs, SE (ReLU inside, widths rounded to 8) or ECA
channel attention, a fixed per-head query/key width, the 'tiered' stem (three 3×3 convs) with or
without its max-pool, PyTorch's symmetric padding of strided convs and pools,
timm's indexing of the relative-position tables by subsampled query position in strided halo
layers, and timm's evaluation preprocessing (`eval_crop_fraction`, `eval_interpolation`; both use
the ImageNet mean / std, as every model here does). Each has a reduced '<name>_mini' row (narrow,
b=4) that the parity tests compare against timm's logits (tests/fixtures/timm).
"""
import dataclasses
from typing import Dict, Optional, Tuple, Union

STAGE_TYPES = ("halo", "sasa", "conv")
STEMS = ("conv", "patch", "sasa", "tiered")
PADDINGS = ("same", "symmetric")
SE_BLOCKS = ("all", "conv")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything that defines one named backbone (and its published training resolution), one
  field per concept; the per-stage widths, heads and SE ratios are derived (width, output_width,
  heads, key_dim, value_dim, se)."""
  blocks: Tuple[int, int, int, int]
  # Per stage: one spatial op for every block, or a tuple with one per block (timm's patterns).
  stage_types: Tuple[Union[str, Tuple[str, ...]], ...] = ("halo",) * 4
  base_width: int = 64
  value_ratio: float = 1.0  # r_v
  output_ratio: Union[float, Tuple[float, float, float, float]] = 4.0  # r_b: one, or per stage
  block_size: int = 8  # b
  halo_size: int = 3  # h
  # The head rule, exactly one of: per-stage head counts, or heads = d_i / head_dim.
  num_heads: Optional[Tuple[int, int, int, int]] = (4, 8, 8, 8)
  head_dim: Optional[int] = None
  final_width: Optional[int] = None  # d_f: 1×1 conv after the last stage
  stem: str = "conv"  # 7×7/2 conv + 3×3/2 max-pool; 'patch': 4×4/4 linear; 'sasa': attention
  stem_width: int = 64
  sasa_kernel: int = 7
  se_ratio: float = 0.0  # squeeze-excitation ratio (0 = none)
  se_blocks: str = "all"  # which blocks have SE: 'all', or 'conv' (3×3-conv blocks: the hybrids)
  activation: str = "silu"
  image_size: int = 224
  randaug_magnitude: int = 10
  paper_params: Optional[float] = None  # millions
  paper_top1: Optional[float] = None
  # Generalisations used by the timm rows (the defaults keep every other model as it was).
  group_width: int = 0  # channels per group of the 3×3 convs (0: one group)
  key_head_dim: Optional[int] = None  # halo q/k width per head (None: q/k are d_i wide)
  se_activation: Optional[str] = None  # inside SE (None: the model's activation)
  se_divisor: int = 1  # SE's reduced width is rounded to a multiple of this
  eca: bool = False  # ECA channel attention after the 3×3 conv of every 'conv' block
  stem_pool: bool = True  # 'conv' / 'tiered' stems end with a 3×3/2 max-pool (else a strided conv)
  padding: str = "same"  # 'symmetric': PyTorch's (k - 1) // 2 on each side for strided convs/pools
  # BatchNorm, declared here once for every model and read the same way by models.build, the
  # classification task and detection (factory.norm_activation): moving-average momentum 0.9 and
  # epsilon 1e-5 (Keras terms), the TPU ResNet / ResNet-RS code the paper's authors trained with
  # (tensorflow/tpu models/official/resnet: MOVING_AVERAGE_DECAY 0.9, EPSILON 1e-5) and PyTorch's
  # defaults timm's HaloNets were trained with (momentum 0.1 = Keras 0.9, eps 1e-5).
  norm_momentum: float = 0.9
  norm_epsilon: float = 1e-5
  query_positions: str = "input"  # HaloAttention's: 'subsampled' indexes a strided layer's
  #                                 tables by subsampled query position (timm's weights)
  eval_crop_fraction: Optional[float] = None  # evaluation center crop (None: the data default)
  eval_interpolation: Optional[str] = None  # evaluation resize method (None: the data default)

  def __post_init__(self):
    for stage_type in sum((tuple(self.listed(stage)) for stage in range(4)), ()):
      if stage_type not in STAGE_TYPES:
        raise ValueError(f"stage type {stage_type!r} is not one of {STAGE_TYPES}")
    if self.stem not in STEMS:
      raise ValueError(f"stem {self.stem!r} is not one of {STEMS}")
    if self.padding not in PADDINGS:
      raise ValueError(f"padding {self.padding!r} is not one of {PADDINGS}")
    if self.se_blocks not in SE_BLOCKS:
      raise ValueError(f"se_blocks {self.se_blocks!r} is not one of {SE_BLOCKS}")
    if (self.num_heads is None) == (self.head_dim is None):
      raise ValueError(f"give one head rule, num_heads or head_dim; got num_heads="
                       f"{self.num_heads!r}, head_dim={self.head_dim!r}")
    if not isinstance(self.output_ratio, (int, float)) and len(self.output_ratio) != 4:
      raise ValueError(f"output_ratio must be one number or 4, got {self.output_ratio!r}")
    listed = tuple(len(t) for t in self.stage_types if not isinstance(t, str))
    if self.lists_blocks and listed != tuple(self.blocks):
      raise ValueError(f"stage_types lists {listed} blocks per stage, blocks says "
                       f"{tuple(self.blocks)}")

  @property
  def lists_blocks(self) -> bool:
    """Whether stage_types lists every block's op (then blocks cannot be resized)."""
    return any(not isinstance(t, str) for t in self.stage_types)

  def listed(self, stage: int) -> Tuple[str, ...]:
    """The spatial op of each block of stage `stage` (0-based)."""
    types = self.stage_types[stage]
    return (types,) * self.blocks[stage] if isinstance(types, str) else tuple(types)

  def block_type(self, stage: int, index: int) -> str:
    """The spatial op of block `index` of stage `stage` (0-based)."""
    return self.listed(stage)[index]

  def width(self, stage: int) -> int:
    """d_i, the bottleneck width of stage `stage` (0-based)."""
    return self.base_width * 2**stage

  def output_width(self, stage: int) -> int:
    """Output channels of every block of stage `stage`: r_b · d_i."""
    ratio = (self.output_ratio if isinstance(self.output_ratio, (int, float))
             else self.output_ratio[stage])
    return int(round(ratio * self.width(stage)))

  def heads(self, stage: int) -> int:
    """Attention heads of stage `stage`: num_heads[stage], or d_i / head_dim."""
    return self.width(stage) // self.head_dim if self.head_dim else self.num_heads[stage]

  def key_dim(self, stage: int) -> int:
    """Halo attention's query / key width in stage `stage`: heads · key_head_dim, or d_i."""
    return self.heads(stage) * self.key_head_dim if self.key_head_dim else self.width(stage)

  def value_dim(self, stage: int) -> int:
    """Halo attention's value width in stage `stage`: r_v · d_i."""
    return int(round(self.value_ratio * self.width(stage)))

  def se(self, stage_type: str) -> float:
    """The squeeze-excitation ratio of a block whose spatial op is `stage_type` (0: none)."""
    return self.se_ratio if self.se_blocks == "all" or stage_type == "conv" else 0.0


def _h(*, b, h, r_v, r_b, stage3, image, d_f, params, top1, magnitude, **kw):
  """An H-family row in the paper's table's terms (blocks 3, 3, stage3, 3)."""
  return ModelSpec(blocks=(3, 3, stage3, 3), block_size=b, halo_size=h, value_ratio=r_v,
                   output_ratio=r_b, image_size=image, final_width=d_f, paper_params=params,
                   paper_top1=top1, randaug_magnitude=magnitude, **kw)


_H7 = dict(b=10, h=3, r_v=4.0, r_b=3.5, stage3=26, image=600, d_f=2048, magnitude=31)
_H4_I21K = dict(blocks=(3, 4, 12, 3), base_width=128, output_ratio=4.0, block_size=8, halo_size=2,
                image_size=256, randaug_magnitude=10)
_DETECTION = dict(stage_types=("conv", "conv", "conv", "halo"), output_ratio=4.0, head_dim=16,
                  num_heads=None, se_ratio=0.0625, activation="relu", image_size=1024)
_RESNET = dict(stage_types=("conv",) * 4, output_ratio=4.0, activation="relu", image_size=224)
_SASA = dict(stage_types=("sasa",) * 4, output_ratio=4.0, num_heads=(8, 8, 8, 8), activation="relu",
             image_size=224)

MODELS: Dict[str, ModelSpec] = {
    # HaloNet H0-H7 (HaloNet paper, table 1 / figure 4).
    "h0": _h(b=8, h=3, r_v=1.0, r_b=0.5, stage3=7, image=256, d_f=None, params=5.5,
             top1=77.9, magnitude=6),
    "h1": _h(b=8, h=3, r_v=1.0, r_b=1.0, stage3=10, image=256, d_f=None, params=8.1,
             top1=79.9, magnitude=8),
    "h2": _h(b=8, h=3, r_v=1.0, r_b=1.25, stage3=11, image=256, d_f=None, params=9.4,
             top1=80.4, magnitude=10),
    "h3": _h(b=10, h=3, r_v=1.0, r_b=1.5, stage3=12, image=320, d_f=1024, params=12.3,
             top1=81.9, magnitude=14),
    "h4": _h(b=12, h=2, r_v=1.0, r_b=3.0, stage3=12, image=384, d_f=1280, params=19.1,
             top1=83.3, magnitude=17),
    "h5": _h(b=14, h=2, r_v=2.5, r_b=2.0, stage3=23, image=448, d_f=1536, params=30.7,
             top1=84.0, magnitude=19),
    "h6": _h(b=8, h=4, r_v=3.0, r_b=2.75, stage3=24, image=512, d_f=1536, params=43.4,
             top1=84.4, magnitude=24),
    "h7": _h(**_H7, params=67.0, top1=84.9),
    # Convolution-attention hybrids of H7: the first 1, 2 or 3 stages are SE conv bottlenecks
    # (the paper counts each at about 67M; C123 does not build that: docs/h7_hybrid_parameters.md).
    "h7_c1": _h(**_H7, params=67.0, top1=None,
                stage_types=("conv", "halo", "halo", "halo"), se_ratio=0.0625, se_blocks="conv"),
    "h7_c12": _h(**_H7, params=67.0, top1=None,
                 stage_types=("conv", "conv", "halo", "halo"), se_ratio=0.0625,
                 se_blocks="conv"),
    "h7_c123": _h(**_H7, params=67.0, top1=None,
                  stage_types=("conv", "conv", "conv", "halo"), se_ratio=0.0625,
                  se_blocks="conv"),
    # Component ablation (HaloNet paper section 4.3): ResNet-50 layout and widths.
    "halonet50": ModelSpec(blocks=(3, 4, 6, 3), output_ratio=4.0, head_dim=16, num_heads=None,
                           activation="relu", image_size=256, paper_params=18.0),
    "resnet50": ModelSpec(blocks=(3, 4, 6, 3), **_RESNET, paper_params=25.5),
    # ImageNet-21k H4 (pretrained at 256 with b=8, h=2; fine-tuned at 384 / 512).
    "h4_i21k": ModelSpec(**_H4_I21K, paper_params=85.0),
    "h4_i21k_patch_stem": ModelSpec(**_H4_I21K, stem="patch", paper_params=85.0),
    "h4_i21k_c12": ModelSpec(**_H4_I21K, stage_types=("conv", "conv", "halo", "halo"),
                             se_ratio=0.0625, se_blocks="conv", paper_params=87.0),
    # Detection backbones: ResNet + SE whose last three blocks (stage 4) are halo attention.
    "resnet50_se_halo_b8": ModelSpec(blocks=(3, 4, 6, 3), block_size=8, halo_size=3, **_DETECTION),
    "resnet50_se_halo_b32": ModelSpec(blocks=(3, 4, 6, 3), block_size=32, halo_size=3,
                                      **_DETECTION),
    "resnet101_se_halo_b8": ModelSpec(blocks=(3, 4, 23, 3), block_size=8, halo_size=3,
                                      **_DETECTION),
    # SASA ResNets (SASA paper, table 1): every 3×3 conv replaced by 7×7 SASA attention.
    "sasa_resnet26": ModelSpec(blocks=(1, 2, 4, 1), **_SASA, paper_params=10.3),
    "sasa_resnet38": ModelSpec(blocks=(2, 3, 5, 2), **_SASA, paper_params=14.1),
    "sasa_resnet50": ModelSpec(blocks=(3, 4, 6, 3), **_SASA, paper_params=18.0),
    "sasa_resnet26_attention_stem": ModelSpec(blocks=(1, 2, 4, 1), stem="sasa", **_SASA,
                                              paper_params=10.3),
    "sasa_resnet38_attention_stem": ModelSpec(blocks=(2, 3, 5, 2), stem="sasa", **_SASA,
                                              paper_params=14.1),
    "sasa_resnet50_attention_stem": ModelSpec(blocks=(3, 4, 6, 3), stem="sasa", **_SASA,
                                              paper_params=18.0),
    # A tiny configuration for fast tests: every stage type, real code path.
    "tiny": ModelSpec(blocks=(1, 1, 1, 1), stage_types=("conv", "halo", "sasa", "halo"),
                      base_width=8, stem_width=8, num_heads=(2, 2, 2, 2), block_size=4,
                      halo_size=1, sasa_kernel=3, final_width=32, se_ratio=0.25, se_blocks="conv",
                      image_size=64, randaug_magnitude=2),
}


# timm's HaloNets (timm 1.0 byoanet.py), imported by official_halonet.convert_timm. 256×256
# inputs; PyTorch padding; eval crop / interpolation from timm's pretrained configs.
_C, _H = "conv", "halo"
_TIMM = dict(image_size=256, padding="symmetric", query_positions="subsampled",
             eval_interpolation="bicubic", num_heads=(8, 8, 8, 8), stem_width=64)
_TIMM_MODELS: Dict[str, ModelSpec] = {
    "halonet_h1": ModelSpec(
        blocks=(3, 3, 10, 3), output_ratio=1.0, block_size=8, halo_size=3, activation="relu",
        eval_crop_fraction=0.95, **_TIMM),
    "halonet26t": ModelSpec(
        blocks=(2, 2, 2, 2), stage_types=((_C, _C), (_C, _C), (_C, _H), (_H, _H)),
        block_size=8, halo_size=2, stem="tiered", activation="relu", eval_crop_fraction=0.95,
        **_TIMM),
    "sehalonet33ts": ModelSpec(
        blocks=(2, 3, 3, 2), stage_types=((_C, _C), (_C, _C, _H), (_C, _C, _H), (_H, _H)),
        output_ratio=(4.0, 4.0, 4.0, 3.0), final_width=1280, block_size=8, halo_size=3,
        stem="tiered", stem_pool=False, se_ratio=1 / 16, se_blocks="conv", se_activation="relu",
        se_divisor=8, eval_crop_fraction=0.94, **_TIMM),
    "halonet50ts": ModelSpec(
        blocks=(3, 4, 6, 3),
        stage_types=((_C,) * 3, (_C, _C, _C, _H), (_C, _H) * 3, (_C, _H, _C)),
        block_size=8, halo_size=3, stem="tiered", eval_crop_fraction=0.94,
        **dict(_TIMM, num_heads=(8, 4, 8, 8))),
    "eca_halonext26ts": ModelSpec(
        blocks=(2, 2, 2, 2), stage_types=((_C, _C), (_C, _C), (_C, _H), (_H, _H)),
        group_width=16, eca=True, key_head_dim=16, block_size=8, halo_size=2, stem="tiered",
        eval_crop_fraction=0.94, **_TIMM),
}
# Reduced versions for the parity fixtures (tools/timm_fixtures.py builds the same in timm):
# stem 16, bottleneck widths 8-64 (outputs twice that, the bottleneck ratio being doubled), b=4,
# h=2 where timm's h is 3 and 1 where it is 2, a quarter of the heads, fewer blocks in the two
# deepest models; 128×128 inputs (10 classes in the fixtures).
_MINI = dict(base_width=8, stem_width=16, block_size=4, image_size=128, num_heads=(2, 2, 2, 2),
             output_ratio=2.0)
_TIMM_MINI: Dict[str, ModelSpec] = {
    "halonet_h1_mini": dataclasses.replace(
        _TIMM_MODELS["halonet_h1"], blocks=(2, 2, 3, 2), halo_size=2,
        **dict(_MINI, output_ratio=1.0)),
    "halonet26t_mini": dataclasses.replace(_TIMM_MODELS["halonet26t"], halo_size=1, **_MINI),
    "sehalonet33ts_mini": dataclasses.replace(
        _TIMM_MODELS["sehalonet33ts"], halo_size=2, final_width=80,
        **dict(_MINI, output_ratio=(2.0, 2.0, 2.0, 1.5))),
    "halonet50ts_mini": dataclasses.replace(
        _TIMM_MODELS["halonet50ts"], blocks=(2, 4, 4, 2),
        stage_types=((_C, _C), (_C, _C, _C, _H), (_C, _H, _C, _H), (_C, _H)), halo_size=2,
        **dict(_MINI, num_heads=(2, 1, 2, 2))),
    "eca_halonext26ts_mini": dataclasses.replace(
        _TIMM_MODELS["eca_halonext26ts"], halo_size=1, group_width=8, key_head_dim=8, **_MINI),
}
MODELS.update(_TIMM_MODELS)
MODELS.update(_TIMM_MINI)
TIMM_MODELS = tuple(_TIMM_MODELS) + tuple(_TIMM_MINI)


def get_spec(model_id: str) -> ModelSpec:
  """The spec of a named model; an unknown name lists the known ones."""
  try:
    return MODELS[model_id]
  except KeyError:
    raise ValueError(f"Unknown model {model_id!r}; known models: {', '.join(sorted(MODELS))}"
                     ) from None
