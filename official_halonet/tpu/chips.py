"""Cloud TPU generations: what a slice name means and what one device can hold and do.

A slice name is what `gcloud compute tpus tpu-vm create --accelerator-type` takes: `v4-32`,
`v5litepod-16`, `v5p-8`, `v6e-8`, `v3-8`, `v2-8`. Its number counts TensorCores for v2, v3, v4 and
v5p, chips for v5e and v6e. A *device* is what one data-parallel replica runs on, as TensorFlow's
TPUStrategy counts them (`num_replicas_in_sync`): one TensorCore on v2 and v3; one chip on v4 and
v5p, whose two TensorCores run as one megacore device (so a `v4-8` has 4 replicas, not 8); one
single-core chip on v5e and v6e. The compiler is given the same devices: `chip_config` asks the
compile-only client for megacore where it would otherwise split a v4 chip into two one-core
devices. The per-device batch is global_batch_size / devices in the slice.

`hbm_gib` is the HBM one device offers a program, as the pinned TPU compiler (libtpu 0.0.14)
states it when a program does not fit ("Used 40.00G of 15.75G hbm" on v5e): a little under the
chip's published capacity, which the runtime keeps some of. tests/test_tpu_check.py checks the
devices, cores and HBM here against the compile-only client's.
Peak bfloat16 FLOP/s and HBM bandwidth are the published per-chip figures of the Cloud TPU
documentation's page for each generation (system architecture: "TPU v2", "TPU v3", "TPU v4",
"TPU v5e", "TPU v5p", "TPU v6e"), divided by the devices per chip.
"""
import dataclasses
import re
from typing import Dict


@dataclasses.dataclass(frozen=True)
class Generation:
  """One TPU generation as the compiler and the roofline see it."""
  name: str                 # slice-name prefix, e.g. 'v5litepod'
  topology: str             # the small topology compiled for (one device of it is used)
  device_kind: str          # what the compile-only client reports for that device
  devices_per_chip: int
  cores_per_device: int     # TensorCores one device runs on (2: a megacore chip)
  slice_counts: str         # what the number in a slice name counts: 'cores' or 'chips'
  hbm_gib: float            # per device, as the compiler offers it
  peak_bf16_flops_per_chip: float
  hbm_bytes_per_second_per_chip: float
  chip_config: str = ""     # the compile-only client's chip_config_name ("megacore"), or default

  @property
  def hbm_bytes(self) -> int:
    return int(self.hbm_gib * 2**30)

  @property
  def peak_flops(self) -> float:
    """Peak bfloat16 FLOP/s of one device."""
    return self.peak_bf16_flops_per_chip / self.devices_per_chip

  @property
  def hbm_bandwidth(self) -> float:
    """HBM bytes/s of one device."""
    return self.hbm_bytes_per_second_per_chip / self.devices_per_chip

  @property
  def _counted_per_device(self) -> int:
    """How much of a slice name's number one device is: its cores where the name counts cores."""
    return self.cores_per_device if self.slice_counts == "cores" else 1

  def devices_in(self, count: int) -> int:
    """Devices (replicas) in a slice whose name carries `count`."""
    return count // self._counted_per_device

  def slice_name(self, devices: int) -> str:
    """The Cloud name of a slice of `devices` devices ('v5p-8' for 4)."""
    return f"{self.name}-{devices * self._counted_per_device}"


GENERATIONS: Dict[str, Generation] = {g.name: g for g in (
    # v2: 45 TFLOP/s, 16 GiB, 600 GB/s per chip of two cores.
    Generation("v2", "v2:2x2", "TPU v2", 2, 1, "cores", 7.48, 45e12, 600e9),
    # v3: 123 TFLOP/s, 32 GiB, 900 GB/s per chip of two cores (the paper's hardware).
    Generation("v3", "v3:2x2", "TPU v3", 2, 1, "cores", 15.48, 123e12, 900e9),
    # v4: 275 TFLOP/s, 32 GiB, 1200 GB/s per chip of two cores (one megacore device).
    Generation("v4", "v4:2x2x1", "TPU v4", 1, 2, "cores", 30.75, 275e12, 1200e9, "megacore"),
    # v5e: 197 TFLOP/s, 16 GB, 819 GB/s per single-core chip.
    Generation("v5litepod", "v5e:2x2", "TPU v5 lite", 1, 1, "chips", 15.75, 197e12, 819e9),
    # v5p: 459 TFLOP/s, 95 GB, 2765 GB/s per chip (two cores, one megacore device).
    Generation("v5p", "v5p:2x2x1", "TPU v5", 1, 2, "cores", 95.74, 459e12, 2765e9),
    # v6e (Trillium): 918 TFLOP/s, 32 GB, 1640 GB/s per single-core chip.
    Generation("v6e", "v6e:2x2", "TPU v6 lite", 1, 1, "chips", 31.25, 918e12, 1640e9),
)}
ALIASES = {"v5e": "v5litepod"}
EXAMPLES = ("v2-8", "v3-8", "v4-8", "v4-32", "v5litepod-16", "v5p-8", "v6e-8")


@dataclasses.dataclass(frozen=True)
class Slice:
  """A named Cloud TPU slice: its generation and how many devices (replicas) it has."""
  name: str
  generation: Generation
  devices: int


def parse_slice(name: str) -> Slice:
  """'v4-32' -> Slice(v4, 32 devices); 'v5p-8' -> 4 devices. ValueError lists the known names."""
  match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name.strip().lower())
  generation = GENERATIONS.get(ALIASES.get(match.group(1), match.group(1))) if match else None
  if generation is None:
    raise ValueError(f"unknown TPU topology {name!r}: use a Cloud slice name such as "
                     f"{', '.join(EXAMPLES)} (generations: {', '.join(GENERATIONS)})")
  count = int(match.group(2))
  devices = generation.devices_in(count)
  if devices < 1:
    raise ValueError(f"TPU topology {name!r} has no whole device ({generation.name} slice names "
                     f"count {generation.slice_counts})")
  return Slice(name.strip().lower(), generation, devices)
