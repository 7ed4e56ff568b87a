"""The console of a successful command: no error-level and no INFO log record on it."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Log records on a console: absl's 'E1204 17:36:35.1 ... file.py:55]', TensorFlow C++'s
# '2026-12-04 17:36:13.03: E external/...' and Python logging's default 'ERROR:root:'.
LOG_RECORD = re.compile(r"^(?:([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+ |"
                        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) |(INFO|ERROR|CRITICAL):)")


def run_quietly(args):
  """Runs `python args...` from the repository as a user would (no TF_CPP_MIN_LOG_LEVEL set);
  asserts it succeeded and its console (stdout and stderr) holds no error-level or INFO record.
  Returns the console's lines (stdout's, then stderr's)."""
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  result = subprocess.run([sys.executable] + args, cwd=ROOT, env=dict(env, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  console = (result.stdout + result.stderr).splitlines()
  records = [line for line in console if LOG_RECORD.match(line)
             and next(g for g in LOG_RECORD.match(line).groups() if g)[0] in "IEFC"]
  assert not records, f"{len(records)} error / INFO records on the console:\n" + "\n".join(
      line[:200] for line in records[:10])
  return console
