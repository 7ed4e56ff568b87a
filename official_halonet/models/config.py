"""The `halonet` backbone config: a named model and its overrides, declared once.

Every override is a field here and nowhere else: `HaloNet` takes the config whole,
`overrides.resolve` applies it to the named `ModelSpec`, Model Garden's builder passes
`backbone_config.get()` through, and the training settings take their backbone fields from it.

    HaloNetConfig(model_id='h4', block_size=12, halo_size=2)   # H4 fine-tuned at 384 px
"""
import dataclasses
from typing import List, Optional

from official.modeling import hyperparams


@dataclasses.dataclass
class HaloNetConfig(hyperparams.Config):
  """A named spec (models.MODELS) and its overrides; None keeps the spec's value.

  block_size, halo_size: b and h of every halo stage (b >= 1; h = 0: no halo).
  se_ratio, final_width: squeeze-excitation ratio of every block and d_f, the 1×1 conv after the
    last stage; 0 removes that layer.
  blocks, base_width, stem_width, head_dim, num_heads: resize the model: 4 per-stage block counts,
    d_0, the stem's width, and the head rule, heads = d_i / head_dim or 4 per-stage counts.
  stochastic_depth_drop_rate: in [0, 1), the last block's; block k of N drops rate·(k+1)/N.
  recompute_attention: attention layers keep only their inputs for the backward pass and
    recompute the rest there: less memory, more time, the same results.
  fused_attention: the halo layers' attention by one Pallas kernel per layer
    (layers/fused_attention.py). None (the default): the kernel in a TPU run for each layer shape
    that passed its check on the chip (training/fused_check.py), XLA's path elsewhere; 'tpu':
    the kernel, unchecked (TPU only); 'none': XLA's path; 'cpu': the kernel interpreted, a slow
    check on a CPU.
  overrides.resolve validates every field. Per-stage tuples are kept as lists (as YAML gives them).
  """
  model_id: str = "h0"
  block_size: Optional[int] = None
  halo_size: Optional[int] = None
  se_ratio: Optional[float] = None
  final_width: Optional[int] = None
  blocks: Optional[List[int]] = None
  base_width: Optional[int] = None
  stem_width: Optional[int] = None
  head_dim: Optional[int] = None
  num_heads: Optional[List[int]] = None
  stochastic_depth_drop_rate: float = 0.0
  recompute_attention: bool = False
  fused_attention: Optional[str] = None

  def __post_init__(self, default_params, restrictions):
    super().__post_init__(default_params, restrictions)
    for name in ("blocks", "num_heads"):
      if isinstance(getattr(self, name), tuple):
        setattr(self, name, list(getattr(self, name)))


FIELDS = tuple(field.name for field in dataclasses.fields(HaloNetConfig))
# Every field but model_id: what the training settings declare beside their own model name.
OVERRIDES = FIELDS[1:]
