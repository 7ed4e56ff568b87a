"""`main.py --mode=tpu_check`: does a configuration compile and fit a Cloud TPU, and what will it cost?

    python main.py --mode=tpu_check --gin_file=gin/h7.gin --tpu_topology=v4-32 [--output=x.json]

For the named slice: the bindings the first gin file is published with there, if it is that file's
published slice (slices.py; before the user's, which win), the per-device batch (global batch /
devices; not divisible is an error), the train and eval steps traced as HLO (steps.py) and compiled
for one device of that TPU generation by XLA's TPU compiler, the pinned libtpu's (compile_only.py).
Before the steps, each fused layer shape is compiled alone at the steps' batches (kernel_check.py):
a shape the compiler refuses takes XLA's path, as a run's check on the chip would send it, and is
named in the report. Reported per step: compiled or the first error line; HBM per device
(arguments: parameters, optimizer slots and the batch; outputs not aliased to arguments;
temporaries; their total) against the chip's; TFLOP and bytes accessed, FLOP per byte, and the
roofline bound max(FLOP / peak, bytes / HBM bandwidth) with the images/s per chip it implies. A
train step that does not fit is bisected for the largest per-device batch that does, and compiled
once more with `recompute_attention`. XLA's cost analysis counts a while loop's body once: a step
whose compiled program has loops says its estimate does not cover them.

What the numbers are not: TensorFlow's CPU lowering of one replica's step, compiled by the TPU
compiler (no TPUStrategy all-reduce, no infeed), and a roofline lower bound, not a measured time.

This module runs the check; compiler.py compiles (compile_only.py in a process of its own),
batch_search.py finds the largest batch that fits, report.py holds the results and prints them.
"""
import dataclasses
import os
from typing import Callable, Tuple

from official_halonet.kernels import tpu_software
from official_halonet.tpu import batch_search
from official_halonet.tpu import chips
from official_halonet.tpu import compiler
from official_halonet.tpu import kernel_check
from official_halonet.tpu import slices
from official_halonet.tpu import steps as steps_lib
from official_halonet.tpu.report import CheckReport
from official_halonet.tpu.report import StepReport
from official_halonet.tpu.report import step_report


class CheckError(RuntimeError):
  """tpu_check cannot run as asked; the message says what to change."""


def check_compiler() -> None:
  """Raises CheckError unless the pinned TPU compiler and JAX are installed."""
  try:
    for package in tpu_software.PACKAGES:
      tpu_software.check(package)
  except tpu_software.VersionError as e:
    raise CheckError(str(e)) from None


def per_device_batch(global_batch: int, tpu: chips.Slice, setting: str) -> int:
  """global_batch / the slice's devices; CheckError when it does not divide."""
  if global_batch % tpu.devices:
    raise CheckError(f"{setting}={global_batch} is not divisible by the {tpu.devices} devices of "
                     f"{tpu.name}: each replica needs the same static batch")
  return global_batch // tpu.devices


def with_published_settings(options, tpu: chips.Slice, say: Callable[[str], None]):
  """`options` with the bindings its first gin file is published with on `tpu` (slices.SETTINGS;
  none unless `tpu` is that file's published slice) put before the user's, as tpu_scripts do."""
  if not options.gin_files:
    return options
  topology = tpu.generation.slice_name(tpu.devices)
  try:
    published = slices.published_settings(options.gin_files[0], topology)
  except KeyError:  # not a published file
    return options
  published = [b for b in published if b not in options.gin_bindings]
  if published:
    say(f"--gin_bindings {'; '.join(published)}: what {options.gin_files[0]} is published with on "
        f"{topology} (official_halonet/tpu/slices.py)")
  return dataclasses.replace(options, gin_bindings=published + list(options.gin_bindings))


def compile_step(steps: steps_lib.Steps, kind: str, batch: int, tpu: chips.Slice,
                 optimized_hlo: str = "") -> StepReport:
  """Traces `kind` at `batch` and compiles it for the slice's generation."""
  try:
    traced = steps.hlo(kind, batch)
  except steps_lib.StepError as e:
    return StepReport(kind, batch, False, error=str(e))
  return step_report(kind, batch,
                     compiler.compile_for(traced.hlo, tpu.generation, optimized_hlo))


def check(options, topology: str, say: Callable[[str], None] = print,
          optimized_hlo_dir: str = "", bisect: bool = True,
          kinds: Tuple[str, ...] = ("train", "eval")) -> CheckReport:
  """Runs tpu_check for `options` (runner.RunOptions) on the slice named `topology`; `bisect`
  False skips the search for the largest fitting batch and the recompute compile; `kinds` names
  the steps compiled, the train step first when it is one of them."""
  try:
    tpu = chips.parse_slice(topology)
  except ValueError as e:
    raise CheckError(str(e)) from None
  check_compiler()  # before minutes of tracing
  options = with_published_settings(options, tpu, say)
  try:
    steps = steps_lib.Steps(options)
    steps.trainer  # pylint: disable=pointless-statement  (built here: its errors are the run's)
  except steps_lib.StepError as e:
    raise CheckError(str(e)) from None
  batches = {"train": per_device_batch(steps.global_batch_size, tpu, "global_batch_size"),
             "eval": per_device_batch(steps.eval_batch_size, tpu, "eval_batch_size")}
  batches = {kind: batch for kind, batch in batches.items() if kind in kinds}
  steps.trusted, refused = kernel_check.refused_shapes(steps.trainer.model, tpu.generation,
                                                       list(batches.values()), say)
  precision = steps.config.runtime.mixed_precision_dtype or "float32"
  report = CheckReport(tpu.name, tpu.generation, tpu.devices, precision, steps.num_parameters, [],
                       kernel_refused=refused)
  for kind, batch in batches.items():
    say(f"compiling the {kind} step, {batch} images per device, for {tpu.generation.device_kind}")
    hlo_path = os.path.join(optimized_hlo_dir, f"{kind}.hlo.txt") if optimized_hlo_dir else ""
    report.steps.append(compile_step(steps, kind, batch, tpu, hlo_path))
  train = report.steps[0]
  if train.kind == "train" and train.out_of_memory and bisect:
    say(f"the train step does not fit at {train.batch} per device: bisecting for the largest "
        f"batch that does")
    report.searched = True
    report.largest_fitting_batch = batch_search.largest_fitting_batch(
        lambda b: report.probe(compile_step(steps, "train", b, tpu)), train)
    if steps.has_attention:
      say("compiling the train step once more with recompute_attention")
      report.recompute = compile_step(
          steps_lib.Steps(options, recompute=True, trusted=steps.trusted), "train", train.batch,
          tpu)
  return report
