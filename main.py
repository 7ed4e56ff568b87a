"""official_halonet: train, evaluate and export HaloNet / SASA models from gin configurations.

    python main.py --gin_file=gin/h7.gin --tpu=my-pod --model_dir=gs://bucket/h7          # TPU pod
    python main.py --gin_file=gin/h0.gin --strategy=mirrored --model_dir=/tmp/h0          # GPUs/CPU
    python main.py --gin_file=gin/h0.gin --gin_bindings="experiment.epochs=90" ...         # override
    python main.py --demo                    # builds a tiny dataset, trains, evaluates, exports
    python main.py --mode=tpu_check --gin_file=gin/h7.gin --tpu_topology=v4-32   # compile for a TPU

Gin is the single configuration surface (see official_halonet/training/experiment.py for every
setting); the run goes through Model Garden's train_lib / Orbit loop, checkpointing and
distribution utilities. Started again with the same command, a killed run resumes.
"""
import os
import sys

# TensorFlow's C++ INFO and WARNING lines (CUDA stubs, CPU features, "Local rendezvous is aborting"
# once per replica on an input error) hide what matters; --verbose shows them. The level must be set
# before TensorFlow is imported, so it is read from the command line here; what still reaches file
# descriptor 2 goes to the run's main.log (official_halonet/console.py).
VERBOSE = any(arg in ("--verbose", "--verbose=true", "--verbose=True") for arg in sys.argv[1:])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if VERBOSE else "2")
# TensorFlow's default CPU allocator gives large buffers back to the OS after every step, so each
# step page-faults its attention logits in again; the pooling (BFC) allocator keeps them
# (docs/cpu_speed.md). Host memory only: TPU and GPU device memory are not affected.
# TF_CPU_ALLOCATOR_USE_BFC=false in the environment keeps TensorFlow's default.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
import official_halonet  # noqa: F401  (selects tf_keras before TensorFlow is imported)

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin configuration file(s); later ones win.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, e.g. 'experiment.epochs = 90'.")
flags.DEFINE_multi_string("gin_params", [], "Model Garden's spelling of --gin_bindings.")
flags.DEFINE_enum("mode", "train_and_eval",
                  ["train", "eval", "train_and_eval", "export", "publish", "tpu_check"],
                  "What to run: export writes a SavedModel with serving signatures; publish "
                  "writes TF Hub classifier and feature-vector modules; tpu_check compiles the "
                  "train and eval steps for --tpu_topology with XLA's TPU compiler (no TPU "
                  "needed) and reports fit, HBM, FLOPs, bytes and a roofline step time.")
flags.DEFINE_string("model_dir", "", "Checkpoints, summaries and the operative config go here.")
flags.DEFINE_string("tpu", "", "TPU name or 'local' (on a TPU VM); implies --strategy=tpu.")
flags.DEFINE_enum("strategy", None, ["tpu", "mirrored", "multi_worker_mirrored", "one_device"],
                  "Distribution strategy (default: tpu with --tpu, else mirrored).")
flags.DEFINE_integer("num_gpus", None, "GPUs for mirrored / one_device (default: all visible).")
flags.DEFINE_integer("num_cpu_devices", 0,
                     "Split the CPU into this many logical devices (mirrored on a CPU host).")
flags.DEFINE_string("export_dir", "", "--mode=export / publish: where the SavedModel or the "
                    "TF Hub modules go (default: under <model_dir>).")
flags.DEFINE_string("checkpoint", "latest", "--mode=export / publish: which checkpoint: "
                    "'latest' (the newest in --model_dir), 'best' (the best-evaluated one, "
                    "<model_dir>/best_ckpt) or a checkpoint path.")
flags.DEFINE_string("tpu_topology", "", "--mode=tpu_check: a Cloud TPU slice name, e.g. v4-32, "
                    "v5litepod-16, v5p-8, v6e-8, v3-8.")
flags.DEFINE_string("output", "", "--mode=tpu_check: also write the report as JSON here.")
flags.DEFINE_string("formats", "saved_model", "--mode=export: comma-separated formats written "
                    "beside the SavedModel (always written), each checked against the Keras model: "
                    "saved_model, tflite (LiteRT, builtin ops), onnx, openvino.")
flags.DEFINE_bool("demo", False, "Run the built-in demo end to end (needs nothing else).")
flags.DEFINE_bool("verbose", False, "Show TensorFlow's C++ lines and Orbit's per-loop output on "
                  "the console (by default they go to <model_dir>/main.log only).")


def main(argv):
  del argv
  import demo
  from official_halonet import console
  model_dir = FLAGS.model_dir or (demo.MODEL_DIR if FLAGS.demo else "")
  if not FLAGS.verbose:
    console.native_stderr_to(console.log_path(model_dir))
  import tensorflow as tf  # after flags
  from official_halonet.data import errors as data_errors
  from official_halonet.training import runner
  options = runner.RunOptions(
      gin_files=FLAGS.gin_file, gin_bindings=FLAGS.gin_bindings + FLAGS.gin_params,
      mode=FLAGS.mode, model_dir=FLAGS.model_dir, strategy=FLAGS.strategy, tpu=FLAGS.tpu,
      num_gpus=FLAGS.num_gpus, num_cpu_devices=FLAGS.num_cpu_devices)
  try:
    if FLAGS.num_cpu_devices > 1:
      runner.configure_cpu_devices(FLAGS.num_cpu_devices)
    if FLAGS.demo:
      demo.run(options, verbose=FLAGS.verbose)
      return 0
    console.configure_logging(console.log_path(FLAGS.model_dir), FLAGS.verbose)
    if FLAGS.mode == "export":
      from official_halonet.export import saved_model
      path = saved_model.export_from_run(options, export_dir=FLAGS.export_dir,
                                         checkpoint_path=FLAGS.checkpoint,
                                         formats=FLAGS.formats)
      print(f"SavedModel written to {path}", flush=True)
    elif FLAGS.mode == "tpu_check":
      return tpu_check(options)
    elif FLAGS.mode == "publish":
      from official_halonet.export import hub
      path = hub.publish_from_run(options, output_dir=FLAGS.export_dir,
                                  checkpoint_path=FLAGS.checkpoint)
      print(f"TF Hub modules written to {path}", flush=True)
    else:
      runner.run(options)
  except (runner.RunError, runner.gin_config.GinError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  except (data_errors.DataError, tf.errors.OpError) as e:
    # A bad shard or record: one line here; the TensorFlow trace and every problem in the log.
    problem = e if isinstance(e, data_errors.DataError) else data_errors.from_tf_error(e)
    if problem is None:
      raise
    console.log_exception(e)
    print(f"error: {problem.summary()}", file=sys.stderr, flush=True)
    return 2
  return 0


def tpu_check(options) -> int:
  """--mode=tpu_check: the report on the console (and as JSON with --output)."""
  from official_halonet.tpu import check
  from official_halonet.tpu import chips
  from official_halonet.tpu import report as report_lib
  if not FLAGS.tpu_topology:
    print("error: --mode=tpu_check needs --tpu_topology, a Cloud TPU slice name such as "
          f"{', '.join(chips.EXAMPLES)}", file=sys.stderr, flush=True)
    return 2
  try:
    report = check.check(options, FLAGS.tpu_topology, say=lambda line: print(line, flush=True))
  except check.CheckError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  print(report_lib.table(report), flush=True)
  if FLAGS.output:
    report_lib.write_json(report, FLAGS.output)
    print(f"report written to {FLAGS.output}", flush=True)
  return 0 if all(step.compiled for step in report.steps) else 1


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
