"""The pinned libtpu's TPU compiler, run in a process of its own (compile_only.py) on any host.

`compile_for` hands compile_only.py one step's HLO and the TPU generation to compile it for, and
returns what it found; a crash of the compiler is a result too (compiled False, its first fatal
line), never an exception.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict

from official_halonet.kernels import tpu_software
from official_halonet.tpu import chips

COMPILE_ONLY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compile_only.py")


def compile_for(hlo: bytes, generation: chips.Generation, optimized_hlo: str = "") -> Dict:
  """compile_only.py's RESULT for `hlo` on one device of `generation` (a crash is an error)."""
  with tempfile.TemporaryDirectory(prefix="tpu_check_") as tmp:
    paths = {name: os.path.join(tmp, name) for name in ("step.hlo.pb", "request", "result")}
    with open(paths["step.hlo.pb"], "wb") as f:
      f.write(hlo)
    with open(paths["request"], "w", encoding="utf-8") as f:
      json.dump({"hlo": paths["step.hlo.pb"], "topology": generation.topology,
                 "chip_config": generation.chip_config, "optimized_hlo": optimized_hlo}, f)
    done = subprocess.run([sys.executable, COMPILE_ONLY, paths["request"], paths["result"]],
                          capture_output=True, text=True, check=False,
                          env={**tpu_software.OFF_TPU_ENVIRONMENT, **os.environ})
    if os.path.exists(paths["result"]):
      with open(paths["result"], encoding="utf-8") as f:
        return json.load(f)
  fatal = re.findall(r"^F\d{4} [^\]]*\] (.*)$", done.stderr, re.M)
  last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no output"]
  return {"compiled": False, "out_of_memory": False,
          "error": f"the TPU compiler crashed (exit {done.returncode}): "
                   f"{(fatal or last)[0].strip()}"}
