"""`main.py --mode=tpu_check`: does a configuration compile and fit a Cloud TPU, and what will it cost?

    python main.py --mode=tpu_check --gin_file=gin/h7.gin --tpu_topology=v4-32 [--output=x.json]

For the named slice: the per-device batch (global batch / devices; not divisible is an error), the
train and eval steps traced as HLO (steps.py) and compiled for one device of that TPU generation
by XLA's TPU compiler, the pinned libtpu's (compile_only.py). Reported per step: compiled or the
first error line; HBM per device (arguments: parameters, optimizer slots and the batch; outputs not
aliased to arguments; temporaries; their total) against the chip's; TFLOP and bytes accessed,
FLOP per byte, and the roofline bound max(FLOP / peak, bytes / HBM bandwidth) with the images/s per
chip it implies. A train step that does not fit is bisected for the largest per-device batch that
does, and compiled once more with `recompute_attention`. XLA's cost analysis counts a while loop's
body once: a step whose compiled program has loops says its estimate does not cover them.

What the numbers are not: TensorFlow's CPU lowering of one replica's step, compiled by the TPU
compiler (no TPUStrategy all-reduce, no infeed), and a roofline lower bound, not a measured time.
"""
import bisect
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

from official_halonet.kernels import tpu_software
from official_halonet.tpu import chips
from official_halonet.tpu import steps as steps_lib

COMPILE_ONLY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compile_only.py")
MAX_COMPILES = 16  # bisection budget: enough for 2**16 / 8 multiples of 8


class CheckError(RuntimeError):
  """tpu_check cannot run as asked; the message says what to change."""


def check_compiler() -> None:
  """Raises CheckError unless the pinned TPU compiler and JAX are installed."""
  try:
    for package in tpu_software.PACKAGES:
      tpu_software.check(package)
  except tpu_software.VersionError as e:
    raise CheckError(str(e)) from None


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


@dataclasses.dataclass
class StepReport:
  """One compiled (or failed) step at one per-device batch, with the roofline."""
  kind: str
  batch: int
  compiled: bool
  error: str = ""
  out_of_memory: bool = False
  hbm: Dict[str, int] = dataclasses.field(default_factory=dict)
  flops: float = 0.0
  bytes_accessed: float = 0.0
  while_loops: int = 0
  compile_seconds: float = 0.0

  @property
  def fits(self) -> bool:
    return self.compiled

  def roofline(self, generation: chips.Generation) -> Dict[str, float]:
    """Step-time bound (s) = max(FLOP / peak, bytes / bandwidth); images/s per chip from it."""
    seconds = max(self.flops / generation.peak_flops,
                  self.bytes_accessed / generation.hbm_bandwidth)
    return {"flop_per_byte": self.flops / self.bytes_accessed if self.bytes_accessed else 0.0,
            "step_seconds": seconds,
            "images_per_second_per_chip": (self.batch * generation.devices_per_chip / seconds
                                           if seconds else 0.0)}


def step_report(kind: str, batch: int, result: Dict) -> StepReport:
  """A StepReport from compile_only's RESULT dict."""
  if not result.get("compiled"):
    return StepReport(kind, batch, False, error=_first_line(result.get("error", "")),
                      out_of_memory=bool(result.get("out_of_memory")))
  hbm = {"arguments": result["argument_bytes"],
         "outputs": result["output_bytes"] - result["alias_bytes"],
         "temporaries": result["temp_bytes"]}
  hbm["total"] = sum(hbm.values())
  return StepReport(kind, batch, True, hbm=hbm, flops=result["flops"],
                    bytes_accessed=result["bytes_accessed"], while_loops=result["while_loops"],
                    compile_seconds=result["compile_seconds"])


def _first_line(message: str) -> str:
  """The compiler's message cut to what failed: for running out of HBM, how much was used of how
  much (and the temporaries' share), e.g. 'Ran out of memory in memory space hbm. Used 22.21G of
  15.75G hbm. HLO temp 22.21G'."""
  text = " ".join(message.split())
  oom = re.search(r"Ran out of memory in memory space hbm\. Used [\d.]+\w* of [\d.]+\w* hbm\.",
                  text)
  if oom:
    temporaries = re.search(r"HLO temp [\d.]+[KMGT]?", text)
    return oom.group(0) + (f" {temporaries.group(0)}" if temporaries else "")
  return text[:400]


def _bytes(number: str, unit: str) -> float:
  return float(number) * 1024 ** "BKMGT".index(unit or "B")


def hbm_shortfall(report: StepReport) -> Optional[Tuple[float, float]]:
  """(bytes of temporaries needed, bytes of HBM available) from an out-of-memory report's
  message, as the pinned libtpu words it: 'Used 22.21G of 15.75G hbm. ... HLO temp 22.21G' (the
  temporaries; all that was used where it does not say), or a single buffer's 'Allocation
  (size=N) would exceed memory (size=M)'; else None."""
  used = re.search(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm", report.error)
  if used:
    temporaries = re.search(r"HLO temp ([\d.]+)([KMGT]?)", report.error)
    return (_bytes(*(temporaries or used).group(1, 2)), _bytes(*used.group(3, 4)))
  single = re.search(r"Allocation \(size=(\d+)\) would exceed memory \(size=(\d+)\)",
                     report.error)
  return (float(single.group(1)), float(single.group(2))) if single else None


def batch_guess(compiled: List[StepReport]) -> Optional[int]:
  """The batch at which the HLO temporaries would just fill the HBM the compiler offers: a line
  (temporaries = fixed + per-image * batch) through the two latest compiles, fitting or not, or
  through the origin when there is one; None before any out-of-memory report."""
  available = [hbm_shortfall(r)[1] for r in compiled if hbm_shortfall(r)]
  points = [(r.batch, r.hbm["temporaries"] if r.compiled else hbm_shortfall(r)[0])
            for r in compiled if r.compiled or hbm_shortfall(r)][-2:]
  if not available:
    return None
  (b1, t1) = points[-1]
  if len(points) == 1 or points[0][0] == b1:
    return int(b1 * available[-1] / t1)
  (b0, t0) = points[0]
  per_image = (t1 - t0) / (b1 - b0)
  # Memory that does not grow with the batch and already exceeds the HBM: nothing fits (0).
  return max(0, int(b1 + (available[-1] - t1) / per_image)) if per_image > 0 else 0


def per_device_batch(global_batch: int, tpu: chips.Slice, setting: str) -> int:
  """global_batch / the slice's devices; CheckError when it does not divide."""
  if global_batch % tpu.devices:
    raise CheckError(f"{setting}={global_batch} is not divisible by the {tpu.devices} devices of "
                     f"{tpu.name}: each replica needs the same static batch")
  return global_batch // tpu.devices


def compile_step(steps: steps_lib.Steps, kind: str, batch: int, tpu: chips.Slice,
                 optimized_hlo: str = "") -> StepReport:
  """Traces `kind` at `batch` and compiles it for the slice's generation."""
  try:
    traced = steps.hlo(kind, batch)
  except steps_lib.StepError as e:
    return StepReport(kind, batch, False, error=str(e))
  return step_report(kind, batch, compile_for(traced.hlo, tpu.generation, optimized_hlo))


def batch_sizes_below(batch: int) -> List[int]:
  """The per-device batches worth trying below `batch`: 1..7, then multiples of 8 (from 16 up a TPU
  batch should be one); every size when `batch` < 16."""
  if batch < 16:
    return list(range(1, batch))
  return list(range(1, 8)) + list(range(8, batch, 8))


def largest_fitting_batch(probe: Callable[[int], StepReport], too_big: StepReport
                          ) -> Optional[int]:
  """The largest of batch_sizes_below(too_big.batch) whose compile fits, or None. Each probe
  compiles; the size tried next is the largest at or under batch_guess's line through the compiles
  so far, else the next size up when a guess just fit, else the middle of the sizes still open:
  usually 2-3 compiles, at most MAX_COMPILES."""
  sizes = batch_sizes_below(too_big.batch)
  low, high = -1, len(sizes)  # indices: sizes[low] fits (-1: none known), sizes[high] does not
  compiled, step_up = [too_big], False  # step_up: a guess just fit; try one size more
  for _ in range(MAX_COMPILES):
    guess = batch_guess(compiled)
    guess = None if guess is None else min(max(bisect.bisect_right(sizes, guess) - 1, 0),
                                           high - 1)
    candidates = ([guess] if guess is not None else []) + ([low + 1] if step_up else [])
    inside = [c for c in candidates if low < c < high]
    middle = inside[0] if inside else (low + high) // 2
    if not low < middle < high:
      break
    report = probe(sizes[middle])
    compiled.append(report)
    step_up = report.fits and middle == guess
    if report.fits:
      low = middle
    else:
      high = middle
  return sizes[low] if low >= 0 else None


@dataclasses.dataclass
class CheckReport:
  """Everything tpu_check found for one configuration on one slice."""
  topology: str
  generation: chips.Generation
  devices: int
  precision: str
  parameters: int
  steps: List[StepReport]
  largest_fitting_batch: Optional[int] = None
  probes: Dict[int, bool] = dataclasses.field(default_factory=dict)  # bisection: batch -> fits
  recompute: Optional[StepReport] = None

  def probe(self, step: StepReport) -> StepReport:
    """Records one bisection compile."""
    self.probes[step.batch] = step.fits
    return step

  def to_json(self) -> Dict:
    def step(report: StepReport) -> Dict:
      row = dataclasses.asdict(report)
      row["fits"] = report.fits
      return {**row, **(report.roofline(self.generation) if report.compiled else {})}
    return {"topology": self.topology, "device_kind": self.generation.device_kind,
            "compiler": f"libtpu {tpu_software.installed('libtpu')}", "devices": self.devices, "precision": self.precision, "parameters": self.parameters,
            "hbm_available_bytes": self.generation.hbm_bytes,
            "peak_flops_per_device": self.generation.peak_flops,
            "hbm_bandwidth_per_device": self.generation.hbm_bandwidth,
            "steps": [step(s) for s in self.steps],
            "largest_fitting_batch": self.largest_fitting_batch,
            "bisection": {str(b): fits for b, fits in sorted(self.probes.items())},
            "recompute_attention": step(self.recompute) if self.recompute else None}


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
  try:
    steps = steps_lib.Steps(options)
    steps.trainer  # pylint: disable=pointless-statement  (built here: its errors are the run's)
  except steps_lib.StepError as e:
    raise CheckError(str(e)) from None
  batches = {"train": per_device_batch(steps.global_batch_size, tpu, "global_batch_size"),
             "eval": per_device_batch(steps.eval_batch_size, tpu, "eval_batch_size")}
  batches = {kind: batch for kind, batch in batches.items() if kind in kinds}
  precision = steps.config.runtime.mixed_precision_dtype or "float32"
  report = CheckReport(tpu.name, tpu.generation, tpu.devices, precision, steps.num_parameters, [])
  for kind, batch in batches.items():
    say(f"compiling the {kind} step, {batch} images per device, for {tpu.generation.device_kind}")
    hlo_path = os.path.join(optimized_hlo_dir, f"{kind}.hlo.txt") if optimized_hlo_dir else ""
    report.steps.append(compile_step(steps, kind, batch, tpu, hlo_path))
  train = report.steps[0]
  if train.kind == "train" and train.out_of_memory and bisect:
    say(f"the train step does not fit at {train.batch} per device: bisecting for the largest "
        f"batch that does")
    report.largest_fitting_batch = largest_fitting_batch(
        lambda b: report.probe(compile_step(steps, "train", b, tpu)), train)
    if steps.has_attention:
      say("compiling the train step once more with recompute_attention")
      report.recompute = compile_step(steps_lib.Steps(options, recompute=True), "train",
                                      train.batch, tpu)
  return report


def _gb(value: float) -> str:
  return f"{value / 1e9:.2f}"


def table(report: CheckReport) -> str:
  """The console summary: one line per step, then the bisection and recompute answers."""
  g = report.generation
  lines = [f"{report.topology}: {report.devices} x {g.device_kind} ({g.hbm_gib:.2f} GiB HBM, "
           f"{g.peak_flops / 1e12:.0f} bf16 TFLOP/s, {g.hbm_bandwidth / 1e9:.0f} GB/s per device), "
           f"{report.precision}, {report.parameters / 1e6:.2f}M parameters",
           "step   batch/device  fits  HBM GB: args + outputs + temps = total  TFLOP  "
           "GB accessed  FLOP/B  roofline ms  img/s/chip"]
  for step in report.steps + ([report.recompute] if report.recompute else []):
    name = "recompute" if step is report.recompute else step.kind
    if not step.compiled:
      lines.append(f"{name:6s} {step.batch:12d}  no    {step.error}")
      continue
    hbm, roof = step.hbm, step.roofline(g)
    lines.append(
        f"{name:6s} {step.batch:12d}  yes   {_gb(hbm['arguments'])} + {_gb(hbm['outputs'])} + "
        f"{_gb(hbm['temporaries'])} = {_gb(hbm['total'])}  {step.flops / 1e12:.3f}  "
        f"{step.bytes_accessed / 1e9:.1f}  {roof['flop_per_byte']:.1f}  "
        f"{roof['step_seconds'] * 1e3:.1f}  {roof['images_per_second_per_chip']:.0f}")
    if step.while_loops:
      lines.append(f"       the compiled {name} step has {step.while_loops} while loop(s): XLA's "
                   f"cost analysis counts each body once, so these FLOP / byte / time figures "
                   f"do not cover their repeats")
  if report.steps and report.steps[0].out_of_memory:
    best = report.largest_fitting_batch
    lines.append(f"largest train batch per device that fits: {best}" if best else
                 "no train batch per device fits, not even 1")
  return "\n".join(lines)


def write_json(report: CheckReport, path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(report.to_json(), f, indent=1, default=str)
