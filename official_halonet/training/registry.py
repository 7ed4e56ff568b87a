"""The experiment registry: the gin configurables that build a run's Model Garden config.

  EXPERIMENTS                    configurable name -> builder: 'experiment' (classification,
                                 training/experiment.py) and 'detection_experiment' (Mask R-CNN /
                                 RetinaNet, training/detection.py)
  build(mixed_precision_default) -> Built(config, configurable): the one configurable the parsed
                                 gin binds (gin's own record of bindings, not the file text)
                                 builds the config; a ConfigError it raises names
                                 `<configurable>.<parameter>` as data.
"""
import dataclasses
from typing import Callable, Dict

import gin

from official.core import config_definitions as cfg
from official_halonet.training import detection
from official_halonet.training import experiment as experiment_lib
from official_halonet.training.config_error import ConfigError

CLASSIFICATION = "experiment"
EXPERIMENTS: Dict[str, Callable[..., cfg.ExperimentConfig]] = {
    CLASSIFICATION: experiment_lib.experiment,
    detection.CONFIGURABLE: detection.detection_experiment,
}


@dataclasses.dataclass
class Built:
  """A Model Garden experiment config and the name of the configurable that built it.

  from_gin: the config came from gin bindings (errors name their file and line); False: from a
  registered experiment and Model Garden's flags (errors name the config field).
  """
  config: cfg.ExperimentConfig
  configurable: str
  from_gin: bool = True


def bound_configurable() -> str:
  """The registered configurable the parsed gin configuration binds ('experiment' when none)."""
  bound = [name for name in EXPERIMENTS if gin.get_bindings(name)]
  if len(bound) > 1:
    parameter = next(iter(gin.get_bindings(bound[1])))
    raise ConfigError(parameter, f"the gin configuration binds both {' and '.join(bound)}; a run "
                      f"builds one experiment", bound[1])
  return bound[0] if bound else CLASSIFICATION


def build(mixed_precision_default: str = "float32") -> Built:
  """Builds the config with the bound configurable (gin must be parsed already)."""
  name = bound_configurable()
  return Built(config=EXPERIMENTS[name](mixed_precision_default=mixed_precision_default),
               configurable=name)
