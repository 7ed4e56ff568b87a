"""Command line of the data tools (convert, validate): absl flags, like main.py, and the console.

Each tool defines its flags on its own `flags.FlagValues`, built when its `main` runs, so importing
a tool beside main.py (or another tool) defines nothing in absl's global FLAGS and no flag name
can collide. `--flag=value` and `--flag value` both work. Run as a program (`run`), a tool's
console shows its own lines and errors only; TensorFlow's and absl's logs go to
<temp>/official_halonet/<tool>.log (official_halonet/console.py), or with --verbose to the console.
"""
import sys
from typing import Callable, Optional, Sequence

from absl import flags

from official_halonet import console

VERBOSE = ("--verbose", "--verbose=true", "--verbose=True")


def parse(define: Callable[[flags.FlagValues], None], argv: Optional[Sequence[str]],
          prog: str, description: str) -> flags.FlagValues:
  """Defines the tool's flags on a fresh FlagValues and parses `argv` (None: sys.argv[1:]).

  --help prints the flags and exits 0; a bad or missing flag prints one line naming it, and the
  usage, to stderr and exits 2.
  """
  values = flags.FlagValues()
  define(values)
  flags.DEFINE_bool("verbose", False, "TensorFlow's and absl's log lines on the console too.",
                    flag_values=values)
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--help" in argv or "-h" in argv:
    print(f"usage: {prog} [flags]\n\n{description}\n\n{values.get_help()}")
    sys.exit(0)
  try:
    values([prog] + argv)
  except flags.Error as e:
    print(f"{prog}: error: {e}\nusage: {prog} [flags]; --help lists them.", file=sys.stderr)
    sys.exit(2)
  return values


def run(main: Callable[[], int], tool: str) -> None:
  """Runs a tool's `main` as a program with the quiet console; exits with its status."""
  console.quiet(console.tool_log_path(tool), verbose=any(a in VERBOSE for a in sys.argv[1:]))
  sys.exit(main())
