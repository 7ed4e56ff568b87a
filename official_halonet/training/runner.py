"""Runs one experiment through Model Garden: strategy, checks, then `train_lib.run_experiment`.

Order of work, so that a bad setting costs seconds, not a TPU reservation:
  1. gin files and bindings parsed (missing file, unknown configurable / parameter, typo: file+line)
  2. `experiment()` builds the Model Garden config (unknown model, impossible image size: file+line)
  3. the input files are matched (a pattern that matches nothing names the pattern)
  4. the distribution strategy is created (Model Garden's distribute_utils) and the batch sizes
     are checked against its replica count; a fused attention kernel against the strategy, and
     the pinned JAX that makes its modules when each step is first traced (the eval step's
     perhaps hours into the run) against what is installed; a TPU run's libtpu against the pin.
     Only now is model_dir created (its log, staged until then, moves in: console.settle), so a
     configuration error leaves none behind;
     for train_and_eval the eval data are read and checked (data.validate.check_eval_data: every
     label, record framing, a sample of images), so bad eval data stop the run before step 1
  5. the task, model, checkpoint restore and the Orbit loop (train_lib).
A killed run started again with the same command resumes from the last checkpoint in model_dir
(Model Garden's checkpoint manager); a NaN / too-large loss stops it before a checkpoint is written.
"""
import contextlib
import os
from typing import Any, Dict, List, Optional, Tuple

import tensorflow as tf
from tensorflow.python.framework import config as tf_framework_config  # op determinism off again
import tf_keras

from official.common import distribute_utils
from official.core import task_factory
from official.core import train_lib
from official.core import train_utils
from official.modeling import performance
from official_halonet import console
from official_halonet import data
from official_halonet.data import validate
from official_halonet.checkpoints import run_files
from official_halonet.kernels import library as kernel_library
from official_halonet.kernels import tpu_software
from official_halonet.models import attention_maps
from official_halonet.training import attention_summary
from official_halonet.training import fused_check
from official_halonet.training import gin_config
from official_halonet.training import loss_guard
from official_halonet.training import precision
from official_halonet.training import progress
from official_halonet.training import registry
from official_halonet.training.config_error import ConfigError
from official_halonet.training.run_options import ConfigurationError
from official_halonet.training.run_options import RunError
from official_halonet.training.run_options import RunOptions
from official_halonet.training.run_options import build_config
from official_halonet.training import task as task_lib  # noqa: F401  (registers the task)

MODES = ("train", "eval", "train_and_eval")
ATTENTION_IMAGES = 3  # validation images whose attention maps go to TensorBoard
STRATEGIES = ("tpu", "mirrored", "multi_worker_mirrored", "one_device")


def _strategy_name(options: RunOptions) -> str:
  name = options.strategy or ("tpu" if options.tpu else "mirrored")
  if name not in STRATEGIES:
    raise RunError(f"--strategy must be one of {STRATEGIES}, got {name!r}")
  if name == "tpu" and not options.tpu:
    raise RunError("--strategy=tpu needs --tpu (a TPU name, or 'local' on a TPU VM)")
  return name


def _num_gpus(options: RunOptions) -> int:
  return (len(tf.config.list_physical_devices("GPU")) if options.num_gpus is None
          else options.num_gpus)


def create_strategy(options: RunOptions) -> tf.distribute.Strategy:
  """Model Garden's distribute_utils, plus logical CPU devices for testing mirrored on a CPU."""
  name = _strategy_name(options)
  num_gpus = _num_gpus(options)
  if options.num_cpu_devices > 1:
    configure_cpu_devices(options.num_cpu_devices)
    if name == "mirrored" and num_gpus == 0:
      return tf.distribute.MirroredStrategy(
          [f"/cpu:{i}" for i in range(options.num_cpu_devices)])
  return distribute_utils.get_distribution_strategy(
      distribution_strategy=name, num_gpus=num_gpus,
      tpu_address=(options.tpu if name == "tpu" else None))


def configure_cpu_devices(count: int) -> None:
  """Splits the host CPU into `count` logical devices; must run before TensorFlow starts."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  wanted = [tf.config.LogicalDeviceConfiguration()] * count
  current = tf.config.get_logical_device_configuration(cpu)
  if current is not None and len(current) == count:
    return
  try:
    tf.config.set_logical_device_configuration(cpu, wanted)
  except RuntimeError:
    raise RunError(f"--num_cpu_devices={count}: TensorFlow's devices were initialised before "
                   f"they could be split") from None


def check_inputs(built: registry.Built, mode: str) -> None:
  """Step 3: every input pattern the mode reads matches files (names the pattern and binding)."""
  config, configurable = built.config, built.configurable
  needed = [("train_input_path", "train_data", config.task.train_data)] if "train" in mode else []
  needed += ([("eval_input_path", "validation_data", config.task.validation_data)]
             if "eval" in mode else [])
  for parameter, field, data_config in needed:
    if getattr(data_config, "tfds_name", ""):
      continue
    patterns = data_config.input_path
    patterns = patterns.split(",") if isinstance(patterns, str) else list(patterns)
    empty = [p for p in patterns if not p or not tf.io.gfile.glob(p)]
    where = (f"{gin_config.locate(parameter, configurable)}: {configurable}.{parameter}"
             if built.from_gin else f"task.{field}.input_path")
    if empty:
      raise RunError(f"{where}: no files match {empty[0]!r}")


def check_eval_data(config) -> None:
  """Step 3, train_and_eval: eval labels, shards and sample images; raises data.errors.DataError."""
  if isinstance(config.task.validation_data, data.DataConfig):  # detection: Model Garden's own
    print(validate.check_eval_data(config.task.validation_data), flush=True)


def check_against_strategy(built: registry.Built, num_replicas: int) -> None:
  """Step 4: batch sizes split evenly over the replicas (static per-replica shapes on TPU)."""
  task = built.config.task
  for parameter, batch in (("global_batch_size", task.train_data.global_batch_size),
                           ("eval_batch_size", task.validation_data.global_batch_size)):
    if batch % num_replicas:
      raise ConfigurationError(ConfigError(
          parameter, f"{parameter}={batch} is not divisible by the {num_replicas} replicas of "
          f"this strategy", built.configurable))


# Where a run takes the fused kernel for the halo layers whose fused_attention is unset: strategy
# name -> the kernel's platform (training/fused_check.py tries each shape first).
DEFAULT_KERNEL = {"tpu": "tpu"}


def _fused_setting(built: registry.Built) -> Optional[str]:
  backbone = built.config.task.model.backbone
  return backbone.halonet.fused_attention if backbone.type == "halonet" else "none"


def check_fused_attention(built: registry.Built, strategy: str) -> None:
  """Step 4: fused_attention='tpu' only on a TPU strategy, and any forced kernel only where the
  pinned JAX that makes it is installed (kernels/library.py)."""
  fused = _fused_setting(built)
  if fused not in kernel_library.PLATFORMS:
    return
  if fused == "tpu" and strategy != "tpu":
    raise ConfigurationError(ConfigError(
        "fused_attention", f"fused_attention='tpu' runs on a TPU only, and this run's strategy is "
        f"{strategy!r}: use None (or 'cpu', the kernel interpreted, a slow check)",
        built.configurable))
  try:
    kernel_library.check_exporter()
  except kernel_library.ExportError as e:
    raise ConfigurationError(ConfigError(
        "fused_attention", f"fused_attention={fused!r} makes its kernels when each step is first "
        f"traced, but {e}", built.configurable)) from None


def _replica_batches(config, mode: str, strategy) -> List[int]:
  """The per-replica batches the run's steps take: train's and eval's, as `mode` runs them."""
  data = ([config.task.train_data] if "train" in mode else []) + (
      [config.task.validation_data] if "eval" in mode else [])
  return [max(1, d.global_batch_size // strategy.num_replicas_in_sync) for d in data] or [1]


def default_kernel(built: registry.Built, strategy: str) -> Optional[str]:
  """The platform of the fused kernel this run tries for its unset halo layers, or None: on a
  TPU strategy where the pinned JAX can make it (else one warning line, and XLA's path)."""
  platform = DEFAULT_KERNEL.get(strategy)
  if platform is None or _fused_setting(built) is not None:
    return None
  try:
    kernel_library.check_exporter()
  except kernel_library.ExportError as e:
    print(f"Warning: the halo layers keep XLA's attention: {e}", flush=True)
    return None
  return platform


def latest_checkpoint_step(model_dir: str) -> Optional[int]:
  path = tf.train.latest_checkpoint(model_dir) if model_dir else None
  return int(path.rsplit("-", 1)[-1]) if path else None


def run(options: RunOptions, built: Optional[registry.Built] = None) -> Dict[str, Any]:
  """Runs train / eval / train_and_eval; returns the final eval logs (may be empty).

  built: a config made elsewhere (official_halonet/train.py: a registered Model Garden
  experiment); None builds it from options' gin files and bindings.
  """
  built, strategy = prepare(options, built)
  config, model_dir = built.config, options.model_dir
  if _is_chief(strategy):
    train_utils.serialize_config(config, model_dir)
    gin_config.write_operative_config(model_dir)
    run_files.remove_partial_saves(model_dir)
  performance.set_mixed_precision_policy(config.runtime.mixed_precision_dtype)
  resumed = latest_checkpoint_step(model_dir)
  if resumed is not None and "train" in options.mode:
    print(f"Resuming from the checkpoint at step {resumed} in {model_dir}", flush=True)
  with _seeded(config):
    with strategy.scope():
      task = task_factory.get_task(config.task, logging_dir=model_dir)
      trainer = train_utils.create_trainer(
          config, task, train="train" in options.mode, evaluate="eval" in options.mode,
          checkpoint_exporter=run_files.maybe_create_best_ckpt_exporter(config, model_dir))
      if "train" in options.mode:
        create_optimizer_weights(trainer.optimizer, trainer.model)
    train_actions, eval_actions = _actions(config, task, trainer, options.mode,
                                           _is_chief(strategy), model_dir)
    # Orbit evaluates after the last training chunk and --mode=eval evaluates once, so Model
    # Garden's post-training evaluation would repeat the last one (a whole validation pass); it
    # runs only when a finished run is started again and nothing is trained.
    finished = resumed is not None and resumed >= config.trainer.train_steps
    try:
      with fused_check.trusted_kernel(trainer.model, default_kernel(built, _strategy_name(options)),
                                      strategy, model_dir if _is_chief(strategy) else "",
                                      _replica_batches(config, options.mode, strategy)):
        _, eval_logs = train_lib.run_experiment(
            distribution_strategy=strategy, task=task, mode=options.mode, params=config,
            model_dir=model_dir, run_post_eval=options.mode == "train_and_eval" and finished,
            train_actions=train_actions, eval_actions=eval_actions, trainer=trainer)
    except loss_guard.LossBlowupError as e:
      last = latest_checkpoint_step(model_dir)
      raise RunError(
          f"training stopped: {e} The last good checkpoint "
          f"{'is step ' + str(last) if last is not None else 'does not exist yet'} in "
          f"{model_dir}; nothing was written after it. Lower the learning rate or check the "
          f"data, then run the same command to resume.") from None
    eval_logs = {k: float(v) for k, v in (eval_logs or eval_actions[0].logs or {}).items()
                 if tf.size(v) == 1}
    _print_summary(eval_logs, config, model_dir)
    return eval_logs


def prepare(options: RunOptions, built: Optional[registry.Built] = None
            ) -> Tuple[registry.Built, tf.distribute.Strategy]:
  """Steps 1-4: the options, the config, the inputs and the strategy, before any model exists;
  model_dir is created (console.settle) only when every configuration check has passed."""
  if options.mode not in MODES:
    raise RunError(f"--mode must be one of {MODES}, got {options.mode!r}")
  if not options.model_dir:
    raise RunError("--model_dir is required")
  name = _strategy_name(options)
  if name == "tpu":  # TensorFlow's TPU runtime is the pinned libtpu's, or the run does not start
    try:
      tpu_software.check("libtpu")
    except tpu_software.VersionError as e:
      raise RunError(str(e)) from None
  built = built or build_config(options, precision.default_dtype(name, _num_gpus(options)))
  check_inputs(built, options.mode)
  strategy = create_strategy(options)
  print(f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s); "
        f"{built.config.runtime.mixed_precision_dtype or 'float32'} compute", flush=True)
  check_against_strategy(built, strategy.num_replicas_in_sync)
  check_fused_attention(built, name)
  console.settle(options.model_dir)  # the configuration is good: model_dir and its log exist now
  if "train" in options.mode and "eval" in options.mode:
    check_eval_data(built.config)
  return built, strategy


@contextlib.contextmanager
def _seeded(config):
  """The run's seed for the initial weights, and op determinism for this run only.

  Op determinism is process-wide: it is turned off again afterwards, so a caller in the same
  process (a notebook, a test) keeps its own setting, as TensorFlow's tf.data rewrites depend
  on it.
  """
  seed = getattr(config.task.train_data, "seed", None)
  if seed is not None:  # the same initial weights on every run with this seed
    tf_keras.utils.set_random_seed(seed)
  determinism_was_on = tf_framework_config.is_op_determinism_enabled()
  if getattr(config.task.train_data, "deterministic", None):  # experiment.deterministic
    tf.config.experimental.enable_op_determinism()
    print(f"Deterministic: op determinism on, seed {seed}", flush=True)
  try:
    yield
  finally:
    if not determinism_was_on:
      tf_framework_config.disable_op_determinism()


def _actions(config, task, trainer, mode: str, is_chief: bool, model_dir: str):
  """Orbit actions: (train: progress line, loss guard; eval: eval line first, attention maps)."""
  train_actions = [progress.ProgressLogger(trainer.global_step, config.trainer.train_steps,
                                           config.task.train_data.global_batch_size)]
  if config.trainer.recovery_max_trials == 0:  # stop at once; > 0: Model Garden's reload-and-retry
    train_actions.append(loss_guard.LossGuard(trainer.global_step, config.trainer.loss_upper_bound,
                                              config.trainer.recovery_begin_steps))
  eval_actions = [attention_summary.EvalLine(trainer.global_step)]
  if "eval" in mode and is_chief and attention_maps.attention_layers(trainer.model):
    images = attention_summary.fixed_images(task.build_inputs(config.task.validation_data),
                                            ATTENTION_IMAGES)
    eval_actions.append(attention_summary.AttentionSummary(trainer.model, images, model_dir,
                                                           trainer.global_step))
  return train_actions, eval_actions


def _print_summary(eval_logs: Dict[str, float], config, model_dir: str) -> None:
  """The latest checkpoint's numbers, then the best one's: --mode=export takes the latest unless
  told --checkpoint=best."""
  if not eval_logs:
    return
  summary = " | ".join(f"{k} {v:.4f}" for k, v in sorted(eval_logs.items())
                       if not k.startswith("best_"))
  print(f"final | latest checkpoint, step {latest_checkpoint_step(model_dir)} | {summary}",
        flush=True)
  best_subdir = config.trainer.best_checkpoint_export_subdir
  best = run_files.best_checkpoint_record(model_dir, best_subdir)
  metric = config.trainer.best_checkpoint_eval_metric
  if best is not None and metric in best:
    print(f"best | {metric} {best[metric]:.4f} at step {int(best['best_ckpt_global_step'])}, "
          f"kept in {os.path.join(model_dir, best_subdir)}: export it with --checkpoint=best",
          flush=True)


def create_optimizer_weights(optimizer, model: tf_keras.Model) -> None:
  """Creates the optimizer's slots (momentum, ...) for every trainable variable of `model` now.

  Left to the first `apply_gradients`, they are created inside the first trace of Orbit's train
  loop, and a tf.function that created variables traces itself a second time. Created here, under
  the strategy's scope, the loop is traced once. The slots are the same variables either way
  (checkpoints key them by their weight, so older checkpoints restore). Keras' own way: `build` for
  the current optimizers, `_create_all_weights` for the legacy ones Model Garden builds by default
  (Model Garden's EMA and Keras' loss-scale wrappers pass it on to the optimizer they wrap).
  """
  variables = model.trainable_variables
  if isinstance(optimizer, tf_keras.optimizers.Optimizer):
    optimizer.build(variables)
  else:
    optimizer._create_all_weights(variables)  # pylint: disable=protected-access


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  return resolver.task_type in (None, "chief") or (
      resolver.task_type == "worker" and resolver.task_id == 0)
