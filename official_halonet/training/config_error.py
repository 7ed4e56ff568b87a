"""The error every experiment builder raises for a setting that cannot work.

`ConfigError.parameter` names the gin parameter and `ConfigError.configurable` the configurable
that has it (e.g. 'experiment', 'detection_experiment'), as data: the runner turns them into the
file and line of the binding (gin_config.locate) without reading the message.
"""


class ConfigError(ValueError):
  """A setting that cannot work: `<configurable>.<parameter>`; the message says why."""

  def __init__(self, parameter: str, message: str, configurable: str = "experiment"):
    super().__init__(message)
    self.parameter = parameter
    self.configurable = configurable


def require(condition: bool, parameter: str, message: str,
            configurable: str = "experiment") -> None:
  """Raises ConfigError(parameter, message, configurable) unless `condition`."""
  if not condition:
    raise ConfigError(parameter, message, configurable)
