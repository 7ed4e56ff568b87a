"""Each published gin file's TPU slice (official_halonet/tpu/slices.py): declared once, named in the
file's comment, taken by tpu_scripts as the default --accelerator-type, dividing the file's train
and eval batches evenly, and, where bench/tpu_check.py has compiled the file's train step at that
slice on the pinned libtpu, fitting one device with at least 5% of its HBM to spare.
"""
import json
import os
import re
import subprocess
import sys

import pytest

import official_halonet  # noqa: F401
from official_halonet.tpu import chips
from official_halonet.tpu import slices
from official_halonet.training import precision
from official_halonet.training import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASURED = os.path.join(ROOT, "bench", "results", "tpu_check.json")
SPARE = 0.05
COMMENT = re.compile(r"^# TPU: published for (\S+) and (\S+): (\d+) images? per device at its "
                     r"global batch of (\d+)$", re.M)


def _published():
  """Every gin file a user trains with: gin/ and gin/detection/ but the demo and coco.gin (an
  include), and timm's imports (not trained)."""
  names = []
  for folder, prefix in (("gin", ""), (os.path.join("gin", "detection"), "detection/")):
    for file in sorted(os.listdir(os.path.join(ROOT, folder))):
      if file.endswith(".gin") and file not in ("demo.gin", "coco.gin"):
        names.append(prefix + file[:-len(".gin")])
  return names


def test_every_published_gin_file_has_its_slices():
  assert sorted(slices.SLICES) == sorted(_published())
  for name, per_generation in slices.SLICES.items():
    assert sorted(per_generation) == sorted(slices.GENERATIONS), name
    for generation, name_ in per_generation.items():
      assert chips.parse_slice(name_).generation.name == generation, (name, name_)


@pytest.mark.parametrize("name", sorted(slices.SLICES))
def test_the_comment_names_the_slices_and_both_batches_divide(name):
  with open(os.path.join(ROOT, "gin", f"{name}.gin"), encoding="utf-8") as f:
    found = COMMENT.findall(f.read())
  assert len(found) == 1, f"gin/{name}.gin: one '# TPU: published for ...' line"
  v4, v5e, per_device, batch = found[0]
  assert (v4, v5e) == (slices.SLICES[name]["v4"], slices.SLICES[name]["v5litepod"])
  config = runner.build_config(runner.RunOptions(gin_files=[f"{name}.gin"]),
                               precision.default_dtype("tpu", 0)).config
  assert config.task.train_data.global_batch_size == int(batch)
  for slice_name in (v4, v5e):
    devices = chips.parse_slice(slice_name).devices
    assert int(batch) == int(per_device) * devices, (slice_name, devices)
    assert config.task.validation_data.global_batch_size % devices == 0, (slice_name, devices)


@pytest.mark.parametrize("name", sorted(slices.SLICES))
def test_the_comment_names_the_settings_each_slice_needs(name):
  with open(os.path.join(ROOT, "gin", f"{name}.gin"), encoding="utf-8") as f:
    text = f.read()
  found = re.findall(r"^# On (\S+) also: (.*)\.$", text, re.M)
  want = [(slices.SLICES[name][generation], "; ".join(bindings))
          for generation, bindings in slices.SETTINGS.get(name, {}).items()]
  assert sorted(found) == sorted(want)


def test_settings_apply_on_the_published_slice_only(monkeypatch):
  monkeypatch.setitem(slices.SETTINGS, "h7",
                      {"v5litepod": ("experiment.recompute_attention = True",)})
  assert slices.published_settings("gin/h7.gin", "v5litepod-256") == (
      "experiment.recompute_attention = True",)
  assert slices.published_settings("gin/h7.gin", "v5litepod-128") == ()
  assert slices.published_settings("gin/h7.gin", "v4-512") == ()
  assert slices.published_settings("gin/h6.gin", "v5litepod-256") == ()
  with pytest.raises(KeyError, match="not a published gin file"):
    slices.published_settings("gin/h9.gin", "v4-8")
  assert slices.name_of(os.path.join(ROOT, "gin", "detection", "maskrcnn_r50_halo_b8.gin")) == (
      "detection/maskrcnn_r50_halo_b8")


def test_tpu_check_adds_the_published_settings_before_the_users(monkeypatch):
  """`main.py --mode=tpu_check` on a file's published slice (by any of its names) compiles what
  tpu_scripts run there: the published bindings first, the user's after them (and not twice)."""
  from official_halonet.tpu import check  # pylint: disable=import-outside-toplevel
  from official_halonet.training import runner  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(slices.SETTINGS, "h7", {"v5litepod": ("a = 1", "b = 2")})
  options = runner.RunOptions(gin_files=[os.path.join(ROOT, "gin", "h7.gin")],
                              gin_bindings=["b = 2", "c = 3"])
  lines = []
  got = check.with_published_settings(options, chips.parse_slice("v5e-256"), lines.append)
  assert got.gin_bindings == ["a = 1", "b = 2", "c = 3"]
  assert lines == [f"--gin_bindings a = 1: what {options.gin_files[0]} is published with on "
                   "v5litepod-256 (official_halonet/tpu/slices.py)"]
  for other in ("v4-512", "v5litepod-128"):
    assert check.with_published_settings(options, chips.parse_slice(other), pytest.fail) == options
  mine = runner.RunOptions(gin_files=["my/experiment.gin"])
  assert check.with_published_settings(mine, chips.parse_slice("v5e-256"), pytest.fail) == mine


def test_measured_slices_fit_with_five_percent_of_hbm_to_spare():
  """Every compile saved for a published slice: at the per-device batch of the file with its
  published settings there, the train step fits with >= 5% spare."""
  with open(MEASURED, encoding="utf-8") as f:
    measured = json.load(f)
  checked = 0
  for name, per_generation in slices.SLICES.items():
    for slice_name in per_generation.values():
      report = measured.get(f"{name}@{slice_name}")
      if report is None:
        continue
      step = report["steps"][0]
      assert step["kind"] == "train" and step["compiled"], (name, slice_name, step["error"])
      assert report["compiler"] == "libtpu 0.0.14"
      options = runner.RunOptions(gin_files=[f"{name}.gin"], gin_bindings=list(
          slices.published_settings(name, slice_name)))
      config = runner.build_config(options, precision.default_dtype("tpu", 0)).config
      devices = chips.parse_slice(slice_name).devices
      assert step["batch"] * devices == config.task.train_data.global_batch_size, (name, slice_name)
      spare = 1 - step["hbm"]["total"] / report["hbm_available_bytes"]
      assert spare >= SPARE, f"{name} on {slice_name}: {spare:.1%} of HBM to spare"
      checked += 1
  assert checked >= 1


def test_the_command_line_is_standard_library_python():
  """tpu_scripts run it with the workstation's python3: no site-packages (-I -S)."""
  script = os.path.join(ROOT, "official_halonet", "tpu", "slices.py")
  run = lambda *args: subprocess.run([sys.executable, "-I", "-S", script, *args],
                                     capture_output=True, text=True, check=False)
  assert run("gin/h7.gin", "v4").stdout == "v4-512\n"
  assert run("gin/detection/retinanet_sasa_r50.gin", "v5litepod").stdout == "v5litepod-32\n"
  missing = run("gin/h9.gin", "v4")
  assert missing.returncode == 1 and missing.stderr == (
      "gin/h9.gin is not a published gin file (official_halonet/tpu/slices.py)\n")
  assert run("gin/h7.gin", "v3").returncode == 1
