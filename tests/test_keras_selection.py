"""Importing official_halonet selects Keras 2 (tf_keras) so Model Garden and hub.KerasLayer work."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, **env_overrides):
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  env.update(env_overrides, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_tf_keras_is_selected_and_hub_keras_layer_works(tmp_path):
  result = _run(f"""
      import official_halonet
      import tensorflow as tf
      import tensorflow_hub as hub
      import tf_keras

      assert tf.keras.layers.Dense is tf_keras.layers.Dense, tf.keras

      class Scale(tf.Module):
        def __init__(self):
          self.w = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 3])])
        def __call__(self, x):
          return x * self.w

      tf.saved_model.save(Scale(), {str(tmp_path)!r})
      model = tf_keras.Sequential([tf_keras.Input([3]), hub.KerasLayer({str(tmp_path)!r}),
                                   tf_keras.layers.Dense(1)])
      print("OUT", model(tf.ones([2, 3])).shape)
      """)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OUT (2, 1)" in result.stdout


def test_keras_3_request_is_refused_with_a_clear_message():
  result = _run("import official_halonet", TF_USE_LEGACY_KERAS="0")
  assert result.returncode != 0
  assert "TF_USE_LEGACY_KERAS='0'" in result.stderr and "tf_keras" in result.stderr
