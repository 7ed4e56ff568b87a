"""What a run is asked to do, and its Model Garden config built from gin (steps 1-2 of a run).

  RunOptions          the command line of a run (gin files and bindings, mode, model_dir, strategy)
  build_config        gin -> Model Garden ExperimentConfig and the configurable that built it
  RunError            a run that cannot start or had to stop; the message says why and where
  ConfigurationError  a RunError for one gin setting, located at its file and line

The runner (training/runner.py) and export (export/) both start from here; this module imports
no training loop.
"""
import dataclasses
from typing import Optional, Sequence

from official_halonet.training import gin_config
from official_halonet.training import registry
from official_halonet.training.config_error import ConfigError


class RunError(RuntimeError):
  """A run that cannot start or had to stop; the message says why and where."""


class ConfigurationError(RunError):
  """A gin setting that cannot work: `configurable`.`parameter`, located at its file and line."""

  def __init__(self, error: ConfigError):
    super().__init__(f"{gin_config.locate(error.parameter, error.configurable)}: "
                     f"{error.configurable}.{error.parameter}: {error}")
    self.parameter = error.parameter
    self.configurable = error.configurable


@dataclasses.dataclass
class RunOptions:
  gin_files: Sequence[str]
  gin_bindings: Sequence[str] = ()
  mode: str = "train_and_eval"
  model_dir: str = ""
  strategy: Optional[str] = None  # None: 'tpu' when tpu is set, else 'mirrored'
  tpu: str = ""
  num_gpus: Optional[int] = None  # None: all visible GPUs
  num_cpu_devices: int = 0  # >1: split the host CPU into this many logical devices


def build_config(options: RunOptions, mixed_precision_default: str = "float32") -> registry.Built:
  """Steps 1-2: gin -> Model Garden ExperimentConfig + the configurable that built it.

  Classification files bind `experiment`; the detection files in gin/detection/ bind
  `detection_experiment` (Model Garden's Mask R-CNN / RetinaNet with a halonet backbone); see
  training/registry.py. A bad setting is a ConfigurationError naming its file and line.
  """
  gin_config.parse(options.gin_files, options.gin_bindings)
  try:
    return registry.build(mixed_precision_default)
  except ConfigError as e:
    raise ConfigurationError(e) from None
  except TypeError as e:  # e.g. a required parameter was never bound
    raise RunError(f"gin configuration: {e}") from None
