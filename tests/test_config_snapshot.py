"""Every gin file's Model Garden params are exactly those recorded in fixtures/config_digests.json.

The record pins each configuration while the plumbing that builds it is refactored: a change in any
field of any published configuration (task, trainer, runtime) fails here, naming the gin file.
A deliberate change re-records with `python tests/test_config_snapshot.py --write` (say why in the
commit). Building all 36 configurations takes about 5 s (no model is built).
"""
import glob
import hashlib
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import official_halonet  # noqa: F401,E402
from official_halonet.training import runner  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(ROOT, "tests", "fixtures", "config_digests.json")
# Files only included by others (they bind no model) are covered by the files that include them.
INCLUDED_ONLY = {"detection/coco.gin", "timm/base.gin"}
# Published files that leave the data paths to the user (the demo writes its own data; timm
# fine-tuning names the user's dataset): fixed placeholders, so their params are defined.
DATA = ["experiment.train_input_path = '/data/train-*'",
        "experiment.eval_input_path = '/data/validation-*'"]
GIN_FILES = sorted(os.path.relpath(p, os.path.join(ROOT, "gin"))
                   for p in glob.glob(os.path.join(ROOT, "gin", "**", "*.gin"), recursive=True)
                   if os.path.relpath(p, os.path.join(ROOT, "gin")) not in INCLUDED_ONLY)


def params(gin_file: str) -> dict:
  """The params (ExperimentConfig.as_dict) the gin file builds on a CPU (float32 default)."""
  text = open(os.path.join(ROOT, "gin", gin_file)).read()
  needs_data = gin_file == "demo.gin" or ("timm/base.gin" in text)
  options = runner.RunOptions(gin_files=[gin_file], gin_bindings=DATA if needs_data else [])
  return runner.build_config(options, "float32").config.as_dict()


def digest(gin_file: str) -> str:
  canonical = json.dumps(params(gin_file), sort_keys=True, default=repr)
  return hashlib.sha256(canonical.encode()).hexdigest()


def test_every_published_configuration_is_recorded():
  with open(RECORD) as f:
    assert sorted(json.load(f)) == GIN_FILES


@pytest.mark.parametrize("gin_file", GIN_FILES)
def test_params_equal_the_record(gin_file):
  with open(RECORD) as f:
    recorded = json.load(f)[gin_file]
  assert digest(gin_file) == recorded, (
      f"gin/{gin_file} builds different params than recorded in {RECORD}")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
  with open(RECORD, "w") as f:
    json.dump({name: digest(name) for name in GIN_FILES}, f, indent=1, sort_keys=True)
    f.write("\n")
  print(f"wrote {RECORD}")
