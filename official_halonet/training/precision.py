"""Runtime precision: what `mixed_precision = 'auto'` means, for every experiment builder.

  DTYPES                         the compute dtypes a run may use
  default_dtype(strategy, gpus)  'auto' on this hardware: bfloat16 on TPU, float16 on GPUs,
                                 float32 on CPU (main.py passes it as mixed_precision_default)
  resolve(setting, default)      (compute dtype, Model Garden loss_scale): float16 gets dynamic
                                 loss scaling, the others none
"""
from typing import Optional, Tuple

DTYPES = ("float32", "bfloat16", "float16")
SETTINGS = ("auto",) + DTYPES


def default_dtype(strategy_name: str, num_gpus: int) -> str:
  """The dtype 'auto' stands for under `strategy_name` with `num_gpus` GPUs."""
  if strategy_name == "tpu":
    return "bfloat16"
  return "float16" if num_gpus > 0 else "float32"


def resolve(setting: str, default: str) -> Tuple[Optional[str], Optional[str]]:
  """(mixed_precision_dtype, loss_scale) for Model Garden's RuntimeConfig.

  Raises ValueError when `setting` is neither 'auto' nor one of DTYPES (nor `default`, for 'auto').
  """
  dtype = default if setting == "auto" else setting
  if dtype not in DTYPES:
    raise ValueError(f"mixed_precision must be one of {SETTINGS}, got {setting!r}"
                     + (f" (standing for {default!r})" if setting == "auto" else ""))
  return dtype, ("dynamic" if dtype == "float16" else None)
