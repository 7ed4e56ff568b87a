"""Command-line parsing for the data tools (convert, validate): absl flags, like main.py.

Each tool defines its flags on its own `flags.FlagValues`, built when its `main` runs, so importing
a tool beside main.py (or another tool) defines nothing in absl's global FLAGS and no flag name
can collide. `--flag=value` and `--flag value` both work.
"""
import sys
from typing import Callable, Optional, Sequence

from absl import flags


def parse(define: Callable[[flags.FlagValues], None], argv: Optional[Sequence[str]],
          prog: str, description: str) -> flags.FlagValues:
  """Defines the tool's flags on a fresh FlagValues and parses `argv` (None: sys.argv[1:]).

  --help prints the flags and exits 0; a bad or missing flag prints one line naming it, and the
  usage, to stderr and exits 2.
  """
  values = flags.FlagValues()
  define(values)
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
