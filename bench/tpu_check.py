"""The README's TPU table: published gin files through `--mode=tpu_check` at a chosen per-device
batch on each named TPU generation, one markdown row per (file, generation) and the JSON reports.

    python bench/tpu_check.py --gin_files=h1,halonet50,resnet50 --generations=v5litepod,v4
    python bench/tpu_check.py --gin_files=resnet50 --generations=v3 --per_device_batch=64 \
        --gin_bindings="experiment.image_size = 224"        # the calibration row
    python bench/tpu_check.py --readme      # the README's table from the saved rows

Each file is compiled at the slice it is published for (official_halonet/tpu/slices.py), with
its own batches and the settings it is published with there; or, with --per_device_batch, at the
slice where its global batch gives that many images per device (e.g. 4096 / 32 = 128 devices:
v4-256, v5litepod-128), the eval batch bound to the same. The figures are the TPU compiler's
(official_halonet/tpu/check.py says what they are and are not). The README's table shows each file
at its published slices: the rows of --out, which tests/test_tpu_slices.py holds to the 5% target,
and those of bench/results/tpu_check_failures.json, compiles at a published slice that do not
compile yet or leave less than 5% of HBM.
Flags are absl's (official_halonet.data.command_line, like the other bench scripts).
"""
import json
import pathlib
import sys
import time

from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PUBLISHED = ("h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7", "h7_c1", "h7_c12", "h7_c123",
             "halonet50", "resnet50", "h4_i21k_pretrain", "h4_i21k_finetune_384",
             "h4_i21k_finetune_512", "sasa_resnet26", "sasa_resnet38", "sasa_resnet50",
             "resnet50_se_halo_b8", "resnet50_se_halo_b32", "resnet101_se_halo_b8",
             "detection/retinanet_r50_halo_b8", "detection/retinanet_sasa_r50",
             "detection/retinanet_sasa_r50_attention_stem", "detection/maskrcnn_r50_halo_b8",
             "detection/maskrcnn_r50_halo_b32", "detection/maskrcnn_r101_halo_b8")


def _define_flags(values: flags.FlagValues) -> None:
  flags.DEFINE_list("gin_files", list(PUBLISHED), "Files under gin/, without .gin (detection "
                    "files as detection/<name>: run them with a smaller --per_device_batch).",
                    flag_values=values)
  flags.DEFINE_list("generations", ["v5litepod", "v4"], "TPU generations (slice-name prefixes).",
                    flag_values=values)
  flags.DEFINE_integer("per_device_batch", 0, "Images per device; 0: the file's published "
                       "slice (official_halonet/tpu/slices.py) at its own batches.",
                       flag_values=values)
  flags.DEFINE_multi_string("gin_bindings", [], "Extra bindings for every file, e.g. "
                            "\"experiment.image_size = 224\".", flag_values=values)
  flags.DEFINE_list("steps", ["train"], "Steps compiled: train, eval (the table shows train).",
                    flag_values=values)
  flags.DEFINE_bool("bisect", False, "Search the largest batch that fits when one does not.",
                    flag_values=values)
  flags.DEFINE_bool("readme", False, "Compile nothing: print the README's table of the train "
                    "steps saved in --out for --generations.", flag_values=values)
  flags.DEFINE_string("out", str(ROOT / "bench" / "results" / "tpu_check.json"),
                      "Where the JSON reports go (merged with rows already there).",
                      flag_values=values)


def row(name: str, report, seconds: float) -> str:
  """One markdown row: file, slice, fits, HBM, TFLOP, GB accessed, FLOP/B, roofline ms."""
  step = report.steps[0]
  if not step.compiled:
    return f"| {name} | {report.topology} | {step.batch} | no: {step.error[:90]} | | | | | |"
  roof = step.roofline(report.generation)
  return (f"| {name} | {report.topology} | {step.batch} | yes | {step.hbm['total'] / 1e9:.1f} | "
          f"{step.flops / 1e12:.2f} | {step.bytes_accessed / 1e9:.1f} | "
          f"{roof['flop_per_byte']:.1f} | {roof['step_seconds'] * 1e3:.0f} | {seconds:.0f} s |")


def readme_table(saved: dict, generations) -> str:
  """The README's table: each published file's train step at its published slice on
  `generations`, in slices.py's order ('not compiled' where no compile is saved)."""
  from official_halonet.tpu import batch_search  # after main's flag parsing, like its others
  from official_halonet.tpu import report as report_lib
  from official_halonet.tpu import slices
  lines = ["| gin file | slice | batch / device | fits | HBM GB | TFLOP | GB accessed "
           "| FLOP / byte | roofline ms | img/s per chip |", "|---|---|---|---|---|---|---|---|---|---|"]
  for name, per_generation in slices.SLICES.items():
    for generation in generations:
      topology = per_generation.get(generation)
      report = saved.get(f"{name}@{topology}")
      if report is None:
        lines.append(f"| {name} | {topology} | | not compiled yet | | | | | | |")
        continue
      lines.append(_readme_row(name, report, batch_search, report_lib))
  return "\n".join(lines)


def _readme_row(name: str, report: dict, batch_search, report_lib) -> str:
  step = report["steps"][0]
  start = f"| {name} | {report['topology']} | {step['batch']} |"
  if not step["compiled"]:
    shortfall = batch_search.hbm_shortfall(report_lib.StepReport(
        "train", step["batch"], False, error=step["error"]))
    why = (f"temporaries {shortfall[0] / 2**30:.2f} GiB > {shortfall[1] / 2**30:.2f} GiB"
           if shortfall else step["error"].split(" while ")[0][:100])  # the cause, not the HLO
    return f"{start} no ({why}) | | | | | | |"
  spare = 1 - step["hbm"]["total"] / report["hbm_available_bytes"]
  return (f"{start} {'yes' if step['fits'] else 'no'}, {spare:.0%} spare | "
          f"{step['hbm']['total'] / 1e9:.2f} | {step['flops'] / 1e12:.2f} | "
          f"{step['bytes_accessed'] / 1e9:.1f} | {step['flop_per_byte']:.1f} | "
          f"{step['step_seconds'] * 1e3:.1f} | {step['images_per_second_per_chip']:.0f} |")


def main(argv=None):
  import official_halonet  # noqa: F401
  from official_halonet.data import command_line
  from official_halonet.tpu import check
  from official_halonet.tpu import chips
  from official_halonet.tpu import slices
  from official_halonet.tpu import steps as steps_lib
  from official_halonet.training import runner

  args = command_line.parse(_define_flags, argv, prog="python bench/tpu_check.py",
                            description=__doc__.split("\n\n")[0])
  out = pathlib.Path(args.out)
  saved = json.loads(out.read_text()) if out.exists() else {}
  if args.readme:
    failures = ROOT / "bench" / "results" / "tpu_check_failures.json"
    print(readme_table({**(json.loads(failures.read_text()) if failures.exists() else {}),
                        **saved}, args.generations))
    return
  print("| gin file | slice | train batch / device | fits | HBM GB | TFLOP | GB accessed | "
        "FLOP/B | roofline ms | compile (host) |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for name in args.gin_files:
    gin_file = str(ROOT / "gin" / f"{name}.gin")
    options = runner.RunOptions(gin_files=[gin_file], gin_bindings=list(args.gin_bindings))
    if not args.per_device_batch:
      topologies = {generation: slices.published_slice(name, generation)
                    for generation in args.generations}
    else:
      global_batch = steps_lib.Steps(options).global_batch_size
      devices = max(1, global_batch // args.per_device_batch)
      settings = "detection_experiment" if name.startswith("detection/") else "experiment"
      options.gin_bindings += [f"{settings}.{key} = {devices * args.per_device_batch}"
                               for key in ("eval_batch_size", "global_batch_size")]
      topologies = {generation: chips.GENERATIONS[generation].slice_name(devices)
                    for generation in args.generations}
    for generation in args.generations:
      start = time.time()
      report = check.check(options, topologies[generation], say=lambda line: None,
                           bisect=args.bisect, kinds=tuple(args.steps))  # adds slices.SETTINGS
      print(row(name, report, time.time() - start), flush=True)
      saved[f"{name}@{report.topology}"] = report.to_json()
      out.write_text(json.dumps(saved, indent=1, default=str))


if __name__ == "__main__":
  main()
