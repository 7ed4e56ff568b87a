"""The SGD + linear warm-up optimizer config both recipes use (classification and detection).

  sgd_with_warmup(learning_rate, warmup_steps, momentum, ...) -> Model Garden OptimizationConfig

`learning_rate` is Model Garden's learning-rate one-of as a dict, e.g. {'type': 'cosine',
'cosine': {...}} (classification) or {'type': 'stepwise', 'stepwise': {...}} (detection); the
warm-up rises linearly from `warmup_learning_rate` to it over `warmup_steps` steps. `ema_decay` > 0
adds Model Garden's exponential moving average of every weight (kept as an optimizer slot).
"""
from typing import Any, Dict

from official.modeling import optimization


def sgd_with_warmup(learning_rate: Dict[str, Any], warmup_steps: int, momentum: float,
                    nesterov: bool = False, warmup_learning_rate: float = 0.0,
                    ema_decay: float = 0.0) -> optimization.OptimizationConfig:
  """SGD (momentum, optionally Nesterov), linear warm-up, then `learning_rate`'s schedule."""
  config = {
      "optimizer": {"type": "sgd", "sgd": {"momentum": momentum, "nesterov": nesterov}},
      "learning_rate": learning_rate,
      "warmup": {"type": "linear", "linear": {"warmup_steps": warmup_steps,
                                              "warmup_learning_rate": warmup_learning_rate}},
  }
  if ema_decay:
    config["ema"] = {"average_decay": ema_decay, "trainable_weights_only": False}
  return optimization.OptimizationConfig(config)
