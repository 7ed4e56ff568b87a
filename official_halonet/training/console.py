"""What reaches the terminal: one progress line per loop, one per evaluation, errors.

Everything else goes to the run's log file (<model_dir>/main.log):
  * absl / Python logging (Model Garden, Orbit, TensorFlow's Python side): runner.configure_logging;
  * Orbit's controller prints every loop's output dict to stdout besides logging it: `quiet_orbit`
    makes it log only;
  * TensorFlow's C++ side writes to file descriptor 2 (start-up lines, grappler, dataset warnings;
    some bypass TF_CPP_MIN_LOG_LEVEL): `native_stderr_to` points descriptor 2 at the log file
    while Python's sys.stderr keeps the terminal, so this project's `error:` lines and Python
    tracebacks still show.
`--verbose` (main.py) skips all of this. Nothing here imports TensorFlow, so main.py can call it
before TensorFlow starts.
"""
import os
import sys
import tempfile

LOG_FILENAME = "main.log"


def log_path(model_dir: str) -> str:
  """<model_dir>/main.log; for a remote model_dir (gs://) a local file under the temp directory."""
  if model_dir and "://" not in model_dir:
    os.makedirs(model_dir, exist_ok=True)
    return os.path.join(model_dir, LOG_FILENAME)
  local = os.path.join(tempfile.gettempdir(), "official_halonet")
  os.makedirs(local, exist_ok=True)
  return os.path.join(local, (model_dir or "run").replace("://", "_").replace("/", "_") + ".log")


def native_stderr_to(path: str) -> None:
  """Sends file descriptor 2 (C++ logging) to `path`; Python's sys.stderr stays on the terminal."""
  sys.stderr.flush()
  terminal = os.dup(2)
  log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(log, 2)
  os.close(log)
  sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding="utf-8", errors="replace")


def quiet_orbit() -> None:
  """Orbit's controller messages (loop dicts, 'saved checkpoint to ...') go to absl logging only."""
  from absl import logging
  from orbit import controller
  controller._log = logging.info  # pylint: disable=protected-access  (Orbit offers no switch)
