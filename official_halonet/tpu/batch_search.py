"""The search for the largest per-device train batch that fits, for a step that does not.

Each probe is a compile (minutes at real sizes), so the search reads the compiler's own figures:
the temporaries an out-of-memory report says it needed and the HBM it offers
(`hbm_shortfall`), through which `batch_guess` draws a line, and `largest_fitting_batch` tries the
batch that line points to before bisecting.
"""
import bisect
import re
from typing import Callable, List, Optional, Tuple

from official_halonet.tpu.report import StepReport

MAX_COMPILES = 16  # bisection budget: enough for 2**16 / 8 multiples of 8


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
