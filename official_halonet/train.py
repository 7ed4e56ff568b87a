"""Model Garden's command line for the registered recipes (training/recipes.py, detection.py).

    python -m official_halonet.train --experiment=halonet_h1_imagenet --config_file=my.yaml \\
        --params_override='task.train_data.input_path=/data/train-*' \\
        --mode=train_and_eval --model_dir=/runs/h1

The flags are Model Garden's own (official.common.flags, as official/projects/*/train.py use
them): --experiment names a registered experiment, --config_file (YAML, repeatable) and
--params_override (YAML or 'a.b=c,...') override it in that order; what the recipe derives from
a changed global batch, train_steps, input_size or num_classes (learning rate, warm-up, decay,
loop lengths, eval batches; the pipelines' image size and classes) is derived again as gin's
`experiment.<setting>` would, unless the overrides set it too; then the run goes through
this project's runner (the same checks, console and Model Garden train_lib loop as main.py).
The strategy is the config's runtime.distribution_strategy ('tpu' with --tpu); a registered
recipe computes in bfloat16 (TPU) unless runtime.mixed_precision_dtype says otherwise.
"""
import os
import sys

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # as main.py (docs/cpu_speed.md)
import official_halonet  # noqa: F401,E402  (selects tf_keras before TensorFlow is imported)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS


def parse(flag_values):
  """Model Garden's ExperimentParser (train_utils: --experiment, then --config_file, then
  --params_override), and for a classification recipe the values it derives from a changed batch,
  train_steps, input_size or num_classes derived again (experiment.follow_overrides)."""
  from official.core import train_utils  # pylint: disable=g-import-not-at-top
  from official_halonet.training import experiment  # pylint: disable=g-import-not-at-top
  from official_halonet.training import recipes  # pylint: disable=g-import-not-at-top
  parser = train_utils.ExperimentParser(flag_values)
  config = parser.parse()
  if flag_values.experiment in recipes.RECIPES:
    config = experiment.follow_overrides(flag_values.experiment, parser.base_experiment(), config)
  config.validate()  # as train_utils.parse_configuration
  return config


def config_from_flags(flag_values=None):
  """The registered experiment named by --experiment with --config_file / --params_override
  applied (`parse`), and the configurable that built it."""
  from official_halonet.training import registry  # pylint: disable=g-import-not-at-top
  from official_halonet.training import task  # pylint: disable=g-import-not-at-top
  config = parse(flag_values or FLAGS)
  classification = isinstance(config.task, task.TaskConfig)
  return registry.Built(config=config, configurable=(registry.CLASSIFICATION if classification
                                                     else registry.detection.CONFIGURABLE),
                        from_gin=False)


def options_from_flags(built, flag_values=None):
  """RunOptions for the runner: mode, model_dir, and the config's strategy."""
  from official_halonet.training import run_options  # pylint: disable=g-import-not-at-top
  values = flag_values or FLAGS
  runtime = built.config.runtime
  return run_options.RunOptions(
      gin_files=(), mode=values.mode, model_dir=values.model_dir,
      strategy="tpu" if values.tpu else runtime.distribution_strategy, tpu=values.tpu or "",
      num_gpus=runtime.num_gpus or None)


def main(argv):
  del argv
  from official_halonet import console  # pylint: disable=g-import-not-at-top
  console.quiet(console.log_path(FLAGS.model_dir), FLAGS.verbose)
  from official_halonet.training import runner  # pylint: disable=g-import-not-at-top
  try:
    built = config_from_flags()
    runner.run(options_from_flags(built), built)
  except (runner.RunError, ValueError, KeyError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    return 2
  return 0


if __name__ == "__main__":
  from official.common import flags as tfm_flags  # pylint: disable=g-import-not-at-top
  tfm_flags.define_flags()
  flags.DEFINE_bool("verbose", False, "Show TensorFlow's and absl's log lines on the console.")
  flags.mark_flags_as_required(["experiment", "mode", "model_dir"])
  app.run(lambda argv: sys.exit(main(argv)))
