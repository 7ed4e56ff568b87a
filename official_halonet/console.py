"""What reaches the terminal: one progress line per loop, one per evaluation, errors.

Everything else goes to the run's log file (<model_dir>/main.log):
  * absl / Python logging (Model Garden, Orbit, TensorFlow's Python side): `configure_logging`;
  * Orbit's controller prints every loop's output dict to stdout besides logging it: `quiet_orbit`
    makes it log only;
  * TensorFlow's C++ side writes to file descriptor 2 (start-up lines, grappler, dataset warnings;
    some bypass TF_CPP_MIN_LOG_LEVEL): `native_stderr_to` points descriptor 2 at the log file
    while Python's sys.stderr keeps the terminal, so this project's `error:` lines and Python
    tracebacks still show.
`quiet(log_file)` does all three, for every entry point (main.py's modes, convert_timm, visualize,
train, the data tools). A top-level module that imports nothing of official_halonet's packages, so
every package may use it (tests/test_layering.py).
`--verbose` skips all of this. Nothing here imports TensorFlow, so an entry point can call it
before TensorFlow starts.
Until a run's model_dir exists, its log is staged under the temp directory (`log_path`); the
runner calls `settle(model_dir)` once the configuration has passed its checks, which creates
model_dir and moves the log there, so a configuration error leaves no model_dir behind.
"""
import atexit
import logging as python_logging
import os
import shutil
import sys
import tempfile
import traceback

LOG_FILENAME = "main.log"
# The log file descriptor 2 (native_stderr_to) and absl (configure_logging) write to, if any.
_in_use = {"stderr": "", "absl": "", "announce": False}
_staged = set()  # logs of local model_dirs that do not exist yet (log_path), for `settle` to move


def log_path(model_dir: str) -> str:
  """<model_dir>/main.log if model_dir exists; else (not created yet, or remote: gs://) a local
  file under the temp directory, named after model_dir (see `settle`). Creates no model_dir."""
  if model_dir and "://" not in model_dir and os.path.isdir(model_dir):
    return os.path.join(model_dir, LOG_FILENAME)
  path = _local_log(model_dir)
  if model_dir and "://" not in model_dir:
    _staged.add(path)
  return path


def _local_log(model_dir: str) -> str:
  local = os.path.join(tempfile.gettempdir(), "official_halonet")
  os.makedirs(local, exist_ok=True)
  return os.path.join(local, (model_dir or "run").replace("://", "_").replace("/", "_") + ".log")


def native_stderr_to(path: str) -> None:
  """Sends file descriptor 2 (C++ logging) to `path`; Python's sys.stderr stays on the terminal."""
  sys.stderr.flush()
  terminal = os.dup(2)
  _descriptor_2_to(path)
  sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding="utf-8", errors="replace")


def _descriptor_2_to(path: str) -> None:
  log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(log, 2)
  os.close(log)
  _in_use["stderr"] = path


def settle(model_dir: str) -> str:
  """Creates a local model_dir and moves the log staged for it (log_path) to <model_dir>/main.log,
  pointing descriptor 2 and absl logging there; returns the log file in use (a remote model_dir
  keeps its local log). Call it when the run is about to write model_dir."""
  if not model_dir or "://" in model_dir:
    return _in_use["absl"] or _in_use["stderr"]
  os.makedirs(model_dir, exist_ok=True)
  target, staged = os.path.join(model_dir, LOG_FILENAME), _local_log(model_dir)
  if staged not in _staged or staged not in (_in_use["absl"], _in_use["stderr"]):
    return target
  with open(staged, "rb") as source, open(target, "ab") as destination:
    shutil.copyfileobj(source, destination)
  if _in_use["stderr"] == staged:
    _descriptor_2_to(target)
  if _in_use["absl"] == staged:
    from absl import logging  # pylint: disable=g-import-not-at-top
    handler = logging.get_absl_handler().python_handler
    previous, handler.stream = handler.stream, open(target, "a", encoding="utf-8")
    previous.close()
    _in_use["absl"] = target
  os.remove(staged)
  if _in_use["announce"]:
    print(f"Logging to {target}", flush=True)
  return target


def quiet_orbit() -> None:
  """Orbit's controller messages (loop dicts, 'saved checkpoint to ...') go to absl logging only."""
  from absl import logging
  from orbit import controller
  controller._log = logging.info  # pylint: disable=protected-access  (Orbit offers no switch)


def tool_log_path(tool: str) -> str:
  """The log file of a tool that writes no run directory: <temp>/official_halonet/<tool>.log."""
  local = os.path.join(tempfile.gettempdir(), "official_halonet")
  os.makedirs(local, exist_ok=True)
  return os.path.join(local, f"{tool}.log")


def quiet(path: str, verbose: bool = False) -> str:
  """Everything but this project's own lines and errors goes to `path` (unless `verbose`).

  TensorFlow's C++ lines (file descriptor 2) and absl / Python logging go to the file; Python's
  sys.stderr stays on the terminal for `error:` lines and tracebacks. Returns `path`.
  """
  if not verbose:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # effective if TensorFlow is not loaded
    native_stderr_to(path)
  return configure_logging(path, verbose, announce=False)


def configure_logging(path: str, verbose: bool = False, announce: bool = True) -> str:
  """Sends absl / TensorFlow / Model Garden logs to the file at `path`, errors also to stderr.

  The file is appended to. Unless `verbose`, Orbit's per-loop dicts go only there too
  (quiet_orbit). `announce` prints where the log is (for a log staged until model_dir exists,
  `settle` prints where it moved). Returns `path`.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().python_handler.stream = open(path, "a", encoding="utf-8")
  _in_use["absl"] = path
  staged = path in _staged
  _in_use["announce"] = announce and staged  # settle announces where it moves to
  if not verbose:
    quiet_orbit()
  if flags.FLAGS.is_parsed() and not flags.FLAGS["stderrthreshold"].present:
    flags.FLAGS.stderrthreshold = "error"
  atexit.register(_drop_records_after_shutdown)
  if announce and not staged:
    print(f"Logging to {path}", flush=True)
  return path


def _drop_records_after_shutdown() -> None:
  """TensorFlow's checkpoints log the values they never restored when they are collected at
  interpreter exit, after logging.shutdown has closed the log file: drop those records rather
  than print a 'Logging error' traceback for each on the terminal."""
  python_logging.raiseExceptions = False


def log_exception(error: BaseException) -> None:
  """Writes the full traceback of `error` to the log file (see configure_logging)."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  stream = logging.get_absl_handler().python_handler.stream
  stream.write("".join(traceback.format_exception(error)))
  stream.flush()
