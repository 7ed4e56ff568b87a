"""Gin as the single configuration surface: parse with errors that name the file and line.

  parse(gin_files, bindings)     every file must exist; includes resolve relative to the including
                                 file, the repository's gin/ folder and the working directory;
                                 an unknown configurable / parameter, a renamed one (RENAMED) or
                                 a syntax error is a GinError naming the file (or
                                 --gin_bindings entry) and line.
  locate(parameter)              where the value of `experiment.<parameter>` in force was bound,
                                 for errors found later (a model name that doesn't exist, ...).
  write_operative_config(dir)    the bindings in force, written to model_dir as operative_config.gin.
"""
import contextlib
import logging
import os
import re
from typing import List, Optional, Sequence, Tuple

import gin
import tensorflow as tf

REPO_GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "gin")
CONFIGURABLE = "experiment"
OPERATIVE_CONFIG = "operative_config.gin"
# Parameters renamed since they were first bound: {configurable: {old name: new name}}.
RENAMED = {"experiment": {"stochastic_depth_rate": "stochastic_depth_drop_rate"}}

_sources: List[Tuple[str, Sequence[str]]] = []  # (name, lines) in parse order


class GinError(ValueError):
  """A configuration that cannot be used; the message names the file and line."""


def _resolve(path: str, relative_to: Optional[str]) -> Optional[str]:
  candidates = [path] if os.path.isabs(path) else [
      os.path.join(d, path) for d in ([relative_to] if relative_to else []) + [os.getcwd(),
                                                                             REPO_GIN_DIR]]
  for candidate in candidates:
    if tf.io.gfile.exists(candidate):
      return candidate
  return None


def _read_with_includes(path: str, seen: set) -> None:
  """Records `path` and, recursively, the files it includes, for `locate`."""
  real = os.path.abspath(path) if "://" not in path else path
  if real in seen:
    return
  seen.add(real)
  gin.add_config_file_search_path(os.path.dirname(path))
  with tf.io.gfile.GFile(path) as f:
    lines = f.read().splitlines()
  for number, line in enumerate(lines, 1):
    match = re.match(r"\s*include\s+['\"](.+)['\"]", line)
    if match:
      included = _resolve(match.group(1), os.path.dirname(path))
      if included is None:
        raise GinError(f"{path}:{number}: included gin file {match.group(1)!r} not found "
                       f"(looked next to it, in {os.getcwd()} and in {REPO_GIN_DIR}).")
      _read_with_includes(included, seen)
  _sources.append((path, lines))


def parse(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses gin files then bindings (later wins); raises GinError naming file and line."""
  gin.clear_config()
  _sources.clear()
  resolved = []
  for path in gin_files:
    found = _resolve(path, None)
    if found is None:
      raise GinError(f"gin file not found: {path} (looked in {os.getcwd()} and {REPO_GIN_DIR}).")
    resolved.append(found)
  seen = set()
  for path in resolved:
    _read_with_includes(path, seen)
  gin.add_config_file_search_path(REPO_GIN_DIR)
  for index, binding in enumerate(bindings):
    _sources.append((f"--gin_bindings[{index}]", binding.splitlines()))
  _refuse_renamed_bindings()
  try:
    with _quiet_include_search():
      gin.parse_config_files_and_bindings(resolved, None, skip_unknown=False,
                                          finalize_config=False)
  except Exception as e:  # gin raises ValueError / SyntaxError / OSError with its location
    raise GinError(f"invalid gin configuration: {_one_line(e)}") from None
  for index, binding in enumerate(bindings):
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise GinError(f"--gin_bindings[{index}] {binding!r}: {_one_line(e)}") from None
  gin.finalize()


def refuse_renamed(configurable: str, names, where: str = "") -> None:
  """A GinError naming the new name of the first renamed parameter among `names`."""
  for name in names:
    new = RENAMED.get(configurable, {}).get(name)
    if new:
      raise GinError(f"{where}{configurable}.{name} is now {configurable}.{new}")


def _refuse_renamed_bindings() -> None:
  pattern = re.compile(r"^\s*(?:[\w.]*/)?(?:[\w.]*\.)?(\w+)\.(\w+)\s*=")
  for name, lines in _sources:
    for number, line in enumerate(lines, 1):
      match = pattern.match(line)
      if match:
        where = f"{name}: " if name.startswith("--") else f"{name}:{number}: "
        refuse_renamed(match.group(1), [match.group(2)], where)


class _IncludeSearchFilter(logging.Filter):
  """Drops gin's log records of its include search (gin/resource_reader.py).

  gin tries every search path in turn with every file reader and logs each miss of its Python
  package reader at error level, although the include is then found; `_read_with_includes` has
  already resolved every include, so a miss here is not a problem worth a line.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.pathname.endswith(os.path.join("gin", "resource_reader.py"))


@contextlib.contextmanager
def _quiet_include_search():
  root = logging.getLogger()  # gin/resource_reader.py logs through the root logger
  quiet = _IncludeSearchFilter()
  root.addFilter(quiet)
  try:
    yield
  finally:
    root.removeFilter(quiet)


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split())


def locate(parameter: str, configurable: str = CONFIGURABLE) -> str:
  """'file:line' (or '--gin_bindings[i]') of the binding of <configurable>.<parameter> in force."""
  pattern = re.compile(rf"^\s*(?:[\w.]*/)?(?:[\w.]*\.)?{configurable}\.{parameter}\s*=")
  where = None
  for name, lines in _sources:
    for number, line in enumerate(lines, 1):
      if pattern.match(line):
        where = name if name.startswith("--") else f"{name}:{number}"
  return where or f"({configurable}.{parameter} is not bound; its default is used)"


def write_operative_config(model_dir: str) -> str:
  """Writes the gin bindings in force to model_dir/operative_config.gin; returns the path."""
  tf.io.gfile.makedirs(model_dir)
  path = os.path.join(model_dir, OPERATIVE_CONFIG)
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(gin.config_str())
  return path
