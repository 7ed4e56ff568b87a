"""main.py --mode=tpu_check: the HLO half (TensorFlow) and the compile half (the pinned libtpu).

Real compiles: a tiny RetinaNet halo train step, which fits; one check of the demo's tiny model at
a batch sized to overflow a v5e chip's HBM (the eval step fits, the train step does not, and the
compiler says by how much); the demo's train step at its own batch, which fits; and three stacked
halo layers' train step with and without recompute.
The search for the largest batch that fits is run against a stand-in compile that answers as the
compiler does, at any scale: a real compile that fits with ~15 GiB of temporaries takes about 16
minutes of host time (measured on the 2-core development machine), too long for the suite;
`bench/tpu_check.py --bisect` runs it for real.
"""
import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys

import detection_fixtures as fx
import pytest
import tensorflow as tf
import tf_keras

import official_halonet  # noqa: F401
from official_halonet.kernels import tpu_software
from official_halonet.layers import HaloAttention
from official_halonet.tpu import batch_search
from official_halonet.tpu import check
from official_halonet.tpu import chips
from official_halonet.tpu import compiler
from official_halonet.tpu import kernel_check
from official_halonet.tpu import report as report_lib
from official_halonet.tpu import slices
from official_halonet.tpu import steps as steps_lib
from official_halonet.training import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "gin", "demo.gin")
TOPOLOGY = "v5litepod-4"  # 4 single-core v5e chips: the demo's batch of 64 is 16 per device
# 65536 images of 32x32 per device: the demo's train step on XLA's attention then needs ~17.5 GB
# of temporaries on a v5e (15.75 GiB available); its eval batch stays the demo's 100 (25 per
# device). XLA's attention: the fused kernel (a TPU run's default) leaves that batch fitting, and
# a batch big enough to overflow with it would take about twice the compile.
XLA = "experiment.fused_attention = 'none'"
OVERFLOW = [f"experiment.global_batch_size = {4 * 65536}", "experiment.eval_batch_size = 100", XLA]


def _options(*bindings):
  return runner.RunOptions(gin_files=[DEMO], gin_bindings=list(bindings))


@pytest.mark.parametrize("name, generation, devices", [
    ("v4-32", "v4", 16), ("v4-8", "v4", 4), ("v5litepod-16", "v5litepod", 16), ("v5e-8", "v5litepod", 8),
    ("v5p-8", "v5p", 4), ("v6e-8", "v6e", 8), ("v3-8", "v3", 8), ("V2-8", "v2", 8)])
def test_cloud_slice_names(name, generation, devices):
  """Devices as TPUStrategy counts replicas: a v4 or v5p chip's two cores are one device."""
  tpu = chips.parse_slice(name)
  assert (tpu.generation.name, tpu.devices) == (generation, devices)


# What the pinned libtpu's compile-only client gives for each generation's topology: devices,
# TensorCores per device, and the HBM its error states (measured by `_available_hbm`).
def _client_devices(generation: chips.Generation):
  script = f"""
import json, sys
sys.path.insert(0, {os.path.join(ROOT, "official_halonet", "tpu")!r})
import compile_only
devices = compile_only.topology_devices({generation.topology!r}, {generation.chip_config!r})
chips = {{tuple(d.coords) for d in devices}}
print(json.dumps(dict(kind=devices[0].device_kind, devices=len(devices), chips=len(chips),
                      cores=[d.num_cores for d in devices])))
"""
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=600, check=True,
                        env={**tpu_software.OFF_TPU_ENVIRONMENT, **os.environ})
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(chips.GENERATIONS))
def test_generations_are_the_devices_the_compiler_and_tensorflow_see(name):
  """chips.py against the pinned compile-only client: device kind, devices per chip, cores per
  device (2 where TensorFlow runs a chip as one megacore device), and the HBM one device offers
  (a program one GiB over it is refused, naming that capacity)."""
  generation = chips.GENERATIONS[name]
  seen = _client_devices(generation)
  assert seen["kind"] == generation.device_kind
  assert seen["devices"] == seen["chips"] * generation.devices_per_chip
  assert set(seen["cores"]) == {generation.cores_per_device}
  over = compiler.compile_for(_arguments_hlo(generation.hbm_bytes + 2**30), generation)
  assert not over["compiled"] and over["out_of_memory"], over
  assert f"of {generation.hbm_gib:.2f}G hbm" in over["error"], over["error"]


def _arguments_hlo(total_bytes: int) -> bytes:
  """HLO of a step that adds one to float32 arguments of `total_bytes` in all (each under 4 GiB,
  the compiler's largest array)."""
  count = -(-total_bytes // 2**31)
  specs = [tf.TensorSpec([total_bytes // count // 4 // 1024, 1024], tf.float32)] * count
  step = tf.function(lambda *xs: [x + 1 for x in xs], jit_compile=True)
  return step.experimental_get_compiler_ir(*specs)(stage="hlo_serialized")


@pytest.mark.parametrize("name", ["v9-8", "v4", "tpu-v4-8", "v5p-1"])
def test_unknown_slice_names_list_the_known_ones(name):
  with pytest.raises(ValueError, match="v4-32.*v5litepod-16") if name != "v5p-1" else \
      pytest.raises(ValueError, match="no whole device"):
    chips.parse_slice(name)


def _linear_hbm(fixed: float, per_image: float, available: float = 15.75 * 2**30):
  """A stand-in compile: temporaries = fixed + per_image * batch; out of memory past `available`,
  reported the way the TPU compiler words it (sizes rounded to 0.01 GiB)."""
  def probe(batch):
    temporaries = fixed + per_image * batch
    if temporaries <= available:
      return report_lib.StepReport("train", batch, True, hbm={"temporaries": temporaries})
    return report_lib.StepReport("train", batch, False, out_of_memory=True, error=(
        f"Ran out of memory in memory space hbm. Used {temporaries / 2**30:.2f}G of "
        f"{available / 2**30:.2f}G hbm. HLO temp {temporaries / 2**30:.2f}G"))
  return probe


@pytest.mark.parametrize("too_big", [9, 16, 17, 100, 65536])
@pytest.mark.parametrize("fixed, per_image", [(0, 2.7e5), (1e6, 2.7e5), (3e9, 2.7e5), (0, 1e7),
                                              (3e9, 1e7), (15e9, 1e9), (17e9, 1.0)])
def test_largest_fitting_batch_finds_the_boundary_in_few_compiles(too_big, fixed, per_image):
  """Multiples of 8 from 16 up; the compiler's numbers lead there in a few compiles."""
  assert batch_search.batch_sizes_below(9) == list(range(1, 9))
  assert batch_search.batch_sizes_below(17) == [1, 2, 3, 4, 5, 6, 7, 8, 16]
  probe, probes = _linear_hbm(fixed, per_image), []
  first = probe(too_big)
  if first.fits:
    return  # nothing to search: the batch fits
  found = batch_search.largest_fitting_batch(lambda b: probes.append(b) or probe(b), first)
  limit = min(too_big - 1, int((15.75 * 2**30 - fixed) // per_image))
  sizes = [b for b in batch_search.batch_sizes_below(too_big) if b <= limit]
  assert found == (sizes[-1] if sizes else None)
  assert all(0 < b < too_big for b in probes)
  assert len(probes) <= 4, probes


def test_batch_guess_from_the_compilers_out_of_memory_message():
  probe = _linear_hbm(0, 2**30 / 50, available=15 * 2**30)  # 20.00G needed at 1000
  assert batch_search.batch_guess([probe(1000)]) == 750
  probe = _linear_hbm(2**30, 2**30 / 50, available=15 * 2**30)  # a line through two compiles
  assert batch_search.batch_guess([probe(1000), probe(500)]) == 700
  probe = _linear_hbm(17 * 2**30, 1.0, available=15 * 2**30)  # the fixed part alone is too much
  assert batch_search.batch_guess([probe(1000), probe(500)]) == 0
  other = report_lib.StepReport("train", 8, False, error="other")
  assert batch_search.batch_guess([other]) is None
  one_buffer = report_lib.StepReport("train", 8, False, out_of_memory=True, error=(  # libtpu's
      "RESOURCE_EXHAUSTED: Allocation (size=21474836480) would exceed memory (size=17179869184)"))
  assert batch_search.hbm_shortfall(one_buffer) == (21474836480, 17179869184)


def test_a_kernels_scoped_vmem_failure_keeps_what_it_asked_of_what_limit():
  op = "%name.29 = (bf16[8,32,32,512]{3,2,1,0:T(8,128)(2,1)S(1)}) custom-call(%a, %b), " * 20
  message = ("RESOURCE_EXHAUSTED: Ran out of memory in memory space vmem while allocating on "
             f"stack for {op}. Scoped allocation with size 17.27M and limit 16.00M exceeded scoped "
             "vmem limit by 1.27M. It should not be possible to run out of scoped vmem.")
  step = report_lib.step_report("train", 8, {"compiled": False, "error": message,
                                             "out_of_memory": True})
  assert step.error.startswith("RESOURCE_EXHAUSTED: Ran out of memory in memory space vmem")
  assert step.error.endswith("Scoped allocation with size 17.27M and limit 16.00M")
  assert len(step.error) < 400

def test_a_fused_shape_the_compiler_refuses_at_the_step_batch_takes_xlas_path(
    tmp_path, monkeypatch):
  """R50-halo detection's stage 4 on v5e (32×32 map, 32 heads of 16): at 8 images per device
  XLA puts the kernel's whole query gradient into the call's 16 MiB of scoped VMEM and the compile
  fails; a 4-head layer of the same map compiles. kernel_check names the refused shape and why;
  the answers are cached (a fresh cache here, so the compiler is asked)."""
  monkeypatch.setattr(kernel_check, "answer_dir", lambda: str(tmp_path))
  tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    x = tf_keras.Input((32, 32, 64))
    wide = HaloAttention(num_heads=32, key_dim=512, block_size=8, halo_size=3, name="wide")(x)
    narrow = HaloAttention(num_heads=4, key_dim=64, block_size=8, halo_size=3, name="narrow")
    model = tf_keras.Model(x, narrow(wide))
  finally:
    tf_keras.mixed_precision.set_global_policy("float32")
  lines = []
  trusted, refused = kernel_check.refused_shapes(model, chips.parse_slice("v5litepod-8").generation,
                                                 [8], lines.append)
  assert [key.split("), ")[1] for key in trusted] == ["4 heads of 16+16 channels, bfloat16"]
  [(key, cause)] = refused.items()
  assert "32 heads of 16+16 channels, bfloat16" in key
  assert re.fullmatch(r"at 8 per device: its call needs 1[6-9]\.\d\dM of scoped VMEM, over the "
                      r"compiler's 16\.00M", cause), cause
  assert len(lines) == 2 and lines[1].endswith(f"XLA's path, as in a run ({cause})")
  assert len(os.listdir(tmp_path)) == 2
  monkeypatch.setattr(compiler, "compile_for", lambda *args: pytest.fail("not cached"))
  assert kernel_check.refused_shapes(model, chips.parse_slice("v5litepod-8").generation, [8],
                                     lines.append) == (trusted, refused)


def test_errors_before_any_compile(monkeypatch):
  with pytest.raises(check.CheckError, match="unknown TPU topology 'v9-8'"):
    check.check(_options(), "v9-8")
  with pytest.raises(check.CheckError, match="global_batch_size=64 is not divisible by the 6 "
                                             "devices of v5litepod-6"):
    check.check(_options(), "v5litepod-6")
  monkeypatch.setattr(tpu_software, "installed", lambda package: "0.0.52")
  with pytest.raises(check.CheckError, match=r"libtpu 0\.0\.52 is installed, but this project "
                                             r"runs TPUs with libtpu 0\.0\.14"):
    check.check(_options(), TOPOLOGY)


def test_the_command_line_says_what_is_wrong_in_one_line():
  done = subprocess.run(
      [sys.executable, "main.py", "--mode=tpu_check", f"--gin_file={DEMO}",
       "--tpu_topology=v9-8"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      "error: unknown TPU topology 'v9-8': use a Cloud slice name such as "
      f"{', '.join(chips.EXAMPLES)} (generations: {', '.join(chips.GENERATIONS)})"]


def test_train_step_hlo_takes_the_batch_and_every_variable_it_updates():
  """The HLO half: Model Garden's whole train step (optimizer slots, metrics, step counter)."""
  steps = steps_lib.Steps(_options())
  text = steps.hlo("train", 8, stage="hlo").hlo
  entry = text[text.index("\nENTRY "):]
  entry = entry[:entry.index("\n}")]
  parameters = re.findall(r"= (\w+\[[\d,]*\])\{?[\d,]*\}? parameter\((\d+)\)", entry)
  trainer = steps.trainer
  variables = (trainer.model.trainable_weights + trainer.optimizer.variables() +
               trainer.model.non_trainable_weights)
  assert "f32[8,32,32,3]" in [shape for shape, _ in parameters]  # the images
  assert "s32[8]" in [shape for shape, _ in parameters]  # the labels
  slots = [v for v in trainer.optimizer.variables() if "momentum" in v.name]
  assert len(slots) == len(trainer.model.trainable_weights)  # Nesterov momentum, one per weight
  # Each variable the step reads is one parameter: at least the model's weights, the optimizer's
  # slots and iterations, the metrics and the global step, and the batch's two tensors.
  assert len(parameters) >= len(variables) + 2


# Under pytest-xdist each worker builds its own module fixtures: the tests of the overflowing
# batch (a compile of about five minutes with libtpu 0.0.14) share one worker, so it is made once.
OVERFLOW_GROUP = pytest.mark.xdist_group("tpu_overflow")


@pytest.fixture(scope="module")
def overflow_report():
  return check.check(_options(*OVERFLOW), TOPOLOGY, say=lambda line: None, bisect=False)


@pytest.fixture(scope="module")
def fitting_train_step():
  """The demo's own batch (64 over 4 devices), the train step alone (bench/tpu_check.py's way), on
  XLA's attention like the overflowing batch (the two compiles' figures are one program's)."""
  report = check.check(_options(XLA), TOPOLOGY, say=lambda line: None, kinds=("train",))
  assert [step.kind for step in report.steps] == ["train"]
  assert report.largest_fitting_batch is None and report.recompute is None  # it fits: no search
  return report.steps[0]


@OVERFLOW_GROUP
def test_eval_step_compiles_fits_and_has_a_consistent_roofline(overflow_report):
  report = overflow_report
  evaluate = next(s for s in report.steps if s.kind == "eval")
  assert evaluate.compiled and evaluate.fits and evaluate.batch == 25
  assert 0 < evaluate.hbm["total"] <= report.generation.hbm_bytes
  assert evaluate.hbm["total"] == sum(evaluate.hbm[k] for k in ("arguments", "outputs",
                                                                 "temporaries"))
  assert evaluate.flops > 0 and evaluate.bytes_accessed > 0 and evaluate.while_loops == 0
  roof = evaluate.roofline(report.generation)
  g = report.generation
  assert roof["step_seconds"] == max(evaluate.flops / g.peak_flops,
                                     evaluate.bytes_accessed / g.hbm_bandwidth)
  assert roof["images_per_second_per_chip"] == pytest.approx(25 / roof["step_seconds"])


@OVERFLOW_GROUP
def test_an_overflowing_batch_does_not_fit_and_the_compilers_numbers_point_below_it(
    overflow_report, fitting_train_step):
  """65536 does not fit, 16 does, and the batch the compiler's figures point to lies between."""
  train = overflow_report.steps[0]
  assert train.kind == "train" and train.batch == 65536
  assert not train.compiled and train.out_of_memory
  assert re.fullmatch(r"Ran out of memory in memory space hbm\. Used ([\d.]+)G of 15\.75G hbm\. "
                      r"HLO temp [\d.]+G", train.error), train.error
  fits = fitting_train_step
  assert fits.batch == 16
  assert fits.compiled and fits.hbm["temporaries"] < overflow_report.generation.hbm_bytes
  assert 16 < batch_search.batch_guess([train]) < 65536
  assert 16 < batch_search.batch_guess([train, fits]) < 65536  # the line through both compiles
  assert overflow_report.largest_fitting_batch is None  # bisect=False: no search was run
  lines = report_lib.table(overflow_report).splitlines()
  assert lines[2].startswith("train") and " no " in lines[2] and "Ran out of memory" in lines[2]
  assert lines[3].startswith("eval") and " yes " in lines[3]
  assert lines[-1] == ("the search for the largest train batch per device that fits was not run "
                       "(bisect=False)")


def test_the_table_says_whether_the_batch_search_ran():
  """A train step out of memory: the table's last line is the search's answer, or says that the
  search was not run (bisect=False), never that nothing fits when nothing was tried."""
  generation = chips.GENERATIONS["v5litepod"]
  train = report_lib.StepReport("train", 64, False, out_of_memory=True,
                                error="Ran out of memory in memory space hbm")
  skipped = report_lib.CheckReport(TOPOLOGY, generation, 4, "bfloat16", 1000, [train])
  assert report_lib.table(skipped).splitlines()[-1] == (
      "the search for the largest train batch per device that fits was not run (bisect=False)")
  searched = dataclasses.replace(skipped, searched=True)
  assert report_lib.table(searched).splitlines()[-1] == (
      "no train batch per device fits, not even 1")
  searched.largest_fitting_batch = 48
  assert report_lib.table(searched).splitlines()[-1] == (
      "largest train batch per device that fits: 48")
  evaluate = dataclasses.replace(skipped, steps=[dataclasses.replace(train, kind="eval")])
  assert "train batch" not in report_lib.table(evaluate)  # no train step: no search line


def _stack_train_step_on_tpu(recompute: bool) -> report_lib.StepReport:
  """Loss and gradients of three stacked halo attention layers, compiled for a v5e device."""
  layers = [HaloAttention(num_heads=2, key_dim=16, value_dim=16, block_size=8, halo_size=2,
                          recompute=recompute, name=f"halo{i}") for i in range(3)]
  spec = tf.TensorSpec([8, 32, 32, 16], tf.float32)
  for layer in layers:
    layer.build(spec.shape)

  def step(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = x
      for layer in layers:
        y = layer(y, training=True)
      loss = tf.reduce_sum(y * y)
    return tape.gradient(loss, [x] + [v for l in layers for v in l.trainable_variables])

  hlo = tf.function(step, jit_compile=True).experimental_get_compiler_ir(spec)(
      stage="hlo_serialized")
  generation = chips.parse_slice(TOPOLOGY).generation
  return report_lib.step_report("train", 8, compiler.compile_for(hlo, generation))


def test_recompute_attention_survives_the_tpu_compiler():
  """A bare tf.recompute_grad is undone by XLA, which merges the backward pass's rerun with the
  forward (the TPU compiler reports the FLOPs and temporaries of no recompute at all); the layers'
  rerun sits behind an optimization barrier: the compiled step does each layer's forward again
  and keeps fewer intermediates alive."""
  plain, recomputed = (_stack_train_step_on_tpu(flag) for flag in (False, True))
  assert plain.compiled and recomputed.compiled, (plain.error, recomputed.error)
  assert recomputed.flops > 1.2 * plain.flops, (recomputed.flops, plain.flops)
  assert recomputed.hbm["temporaries"] < plain.hbm["temporaries"], (recomputed.hbm, plain.hbm)


def test_recompute_attention_is_what_the_second_compile_builds():
  steps = steps_lib.Steps(_options(), recompute=True)
  assert steps.config.task.model.backbone.halonet.recompute_attention
  assert not steps_lib.Steps(_options()).config.task.model.backbone.halonet.recompute_attention


@OVERFLOW_GROUP
def test_the_json_report_holds_the_table(overflow_report, tmp_path):
  path = str(tmp_path / "report.json")
  report_lib.write_json(overflow_report, path)
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["topology"] == TOPOLOGY and saved["devices"] == 4
  assert saved["precision"] == "bfloat16"
  assert [s["kind"] for s in saved["steps"]] == ["train", "eval"]
  assert saved["steps"][1]["fits"] and not saved["steps"][0]["fits"]
  assert saved["steps"][1]["step_seconds"] > 0
  assert "Ran out of memory" in saved["steps"][0]["error"]


RETINANET = os.path.join(ROOT, "gin", "detection", "retinanet_r50_halo_b8.gin")
MASK_RCNN = os.path.join(ROOT, "gin", "detection", "maskrcnn_r50_halo_b8.gin")


def test_a_detection_train_step_compiles_and_fits():
  """The published RetinaNet halo recipe, its backbone shrunk through the backbone config's shape
  overrides and small heads, at 128 px and 2 images per device: Model Garden's detection train
  step (anchor targets, focal and box losses, the optimizer) compiles for v5e and fits."""
  model = dict(fx.SMALL_HEADS["retinanet"],
               backbone={"halonet": fx.tiny_overrides("resnet50_se_halo_b8")})
  options = runner.RunOptions(gin_files=[RETINANET], gin_bindings=[
      "detection_experiment.image_size = 128", "detection_experiment.num_classes = 4",
      "detection_experiment.global_batch_size = 8", "detection_experiment.eval_batch_size = 8",
      f"detection_experiment.params_override = {{'task': {{'model': {model!r}}}}}"])
  report = check.check(options, TOPOLOGY, say=lambda line: None, kinds=("train",))
  train = report.steps[0]
  assert (train.kind, train.batch, report.precision) == ("train", 2, "bfloat16")
  assert train.compiled and train.fits, train.error
  assert 0 < train.hbm["total"] < report.generation.hbm_bytes
  assert train.flops > 0 and train.bytes_accessed > 0 and train.while_loops == 0


def test_mask_rcnn_steps_need_neither_eval_records_nor_an_annotation_file(tmp_path):
  """Model Garden's Mask R-CNN task writes its COCO annotation file from the eval records when it
  is given none: tpu_check reads no data, so its eval step takes the ground truth the step sends
  to the host, and the step traces with records that do not exist."""
  model = dict(fx.SMALL_HEADS["maskrcnn"],
               backbone={"halonet": fx.tiny_overrides("resnet50_se_halo_b8")})
  missing = str(tmp_path / "no-such-records*")
  steps = steps_lib.Steps(runner.RunOptions(gin_files=[MASK_RCNN], gin_bindings=[
      "detection_experiment.image_size = 128", "detection_experiment.num_classes = 4",
      f"detection_experiment.train_input_path = '{missing}'",
      f"detection_experiment.eval_input_path = '{missing}'",
      f"detection_experiment.params_override = {{'task': {{'model': {model!r}}}}}"]))
  assert steps.task.task_config.model.include_mask
  text = steps.hlo("eval", 2, stage="hlo").hlo
  entry = text[text.index("\nENTRY "):]
  assert "f32[2,128,128,3]" in entry[:entry.index("\n}")]  # the images the step takes


@OVERFLOW_GROUP
def test_the_readme_table_shows_what_the_compiler_said(overflow_report, fitting_train_step):
  """bench/tpu_check.py --readme: a row per published file at its published slice of the chosen
  generations: what its saved train step gave (the HBM to spare where it fits, the temporaries it
  needs against the HBM the compiler offers where it does not), or that none is saved."""
  spec = importlib.util.spec_from_file_location("bench_tpu_check",
                                                os.path.join(ROOT, "bench", "tpu_check.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  fits = dataclasses.replace(overflow_report, steps=[fitting_train_step], topology="v5litepod-128")
  saved = {"h1@v5litepod-128": fits.to_json(),
           "h7@v5litepod-256": dataclasses.replace(overflow_report,
                                                   topology="v5litepod-256").to_json(),
           "h1@v4-256": dataclasses.replace(fits, topology="v4-256").to_json()}
  lines = bench.readme_table(saved, ["v5litepod"]).splitlines()
  assert len(lines) == 2 + len(slices.SLICES)
  rows = {line.split(" | ")[0][2:]: line for line in lines[2:]}
  spare = 1 - fitting_train_step.hbm["total"] / overflow_report.generation.hbm_bytes
  assert rows["h1"].startswith(f"| h1 | v5litepod-128 | 16 | yes, {spare:.0%} spare |")
  needed = batch_search.hbm_shortfall(overflow_report.steps[0])[0] / 2**30
  assert rows["h7"].startswith(f"| h7 | v5litepod-256 | 65536 | no (temporaries {needed:.2f} GiB > "
                               f"15.75 GiB) |")
  assert rows["h0"] == "| h0 | v5litepod-128 | | not compiled yet | | | | | | |"
  roofline = fitting_train_step.roofline(overflow_report.generation)
  assert f"| {roofline['step_seconds'] * 1e3:.1f} |" in rows["h1"]
