"""What tpu_check reports: one compiled step (`StepReport`, with its roofline), a whole check
(`CheckReport`), and their console table and JSON file.
"""
import dataclasses
import json
import re
from typing import Dict, List, Optional

from official_halonet.kernels import tpu_software
from official_halonet.tpu import chips


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
  15.75G hbm. HLO temp 22.21G'; for one op's scoped VMEM, the op and what it asked of what limit
  ('... allocating on stack for %x = ... custom-call(...) ... Scoped allocation with size 17.27M
  and limit 16.00M ...', the op's HLO cut short)."""
  text = " ".join(message.split())
  oom = re.search(r"Ran out of memory in memory space hbm\. Used [\d.]+\w* of [\d.]+\w* hbm\.",
                  text)
  if oom:
    temporaries = re.search(r"HLO temp [\d.]+[KMGT]?", text)
    return oom.group(0) + (f" {temporaries.group(0)}" if temporaries else "")
  scoped = re.search(r"Scoped allocation with size [\d.]+\w* and limit [\d.]+\w*", text)
  if scoped:
    return f"{text[:300]} ... {scoped.group(0)}"
  return text[:400]


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
  searched: bool = False  # whether the search for largest_fitting_batch ran (check's `bisect`)
  kernel_refused: Dict[str, str] = dataclasses.field(default_factory=dict)  # shape -> why: XLA's

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
            "recompute_attention": step(self.recompute) if self.recompute else None,
            "fused_kernel_refused": dict(self.kernel_refused)}


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
  if report.steps and report.steps[0].kind == "train" and report.steps[0].out_of_memory:
    lines.append(_search_line(report))
  lines += [f"XLA's attention for {shape}: the compiler refuses its fused kernel ({why})"
            for shape, why in report.kernel_refused.items()]
  return "\n".join(lines)


def _search_line(report: CheckReport) -> str:
  """The table's answer for a train step that does not fit: the search's result, or that it was
  not run."""
  if not report.searched:
    return ("the search for the largest train batch per device that fits was not run "
            "(bisect=False)")
  best = report.largest_fitting_batch
  return (f"largest train batch per device that fits: {best}" if best else
          "no train batch per device fits, not even 1")


def write_json(report: CheckReport, path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(report.to_json(), f, indent=1, default=str)
