"""official_halonet: HaloNet, SASA and conv-attention hybrid backbones for TF2 / Model Garden.

Importing this package selects Keras 2 (tf_keras) as `tf.keras`, the Keras Model Garden and
TensorFlow Hub's `hub.KerasLayer` are written for. It must happen before TensorFlow first resolves
`tf.keras`, so it is done here, at the top of the package, before anything imports TensorFlow.
A user who has set TF_USE_LEGACY_KERAS to something else gets a clear error instead of Keras 3
tensors failing deep inside a Model Garden backbone.
"""
import os
import sys

_LEGACY = os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
if _LEGACY.strip().lower() not in ("1", "true", "yes"):
  raise ImportError(
      "official_halonet needs Keras 2 (tf_keras), as Model Garden and tensorflow_hub.KerasLayer do, "
      f"but the environment sets TF_USE_LEGACY_KERAS={_LEGACY!r}. Unset it or set it to 1.")

# `python -m official_halonet.<tool>`: TensorFlow's C++ INFO and WARNING lines are not the tool's
# output and are printed as TensorFlow loads, before the tool runs (main.py does the same for
# itself; --verbose or TF_CPP_MIN_LOG_LEVEL=0 shows them). While Python imports the packages of a
# -m module, sys.argv[0] is '-m'.
if sys.argv[:1] == ["-m"] and not {"--verbose", "--verbose=true", "--verbose=True"} & set(sys.argv):
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
