"""Float tolerances derived from the dtype and the length of the reductions being compared.

Two computations of the same float32 result (a float64 reference, another kernel, XLA's fusion of
it, another thread count) differ only by rounding. Each rounding of a float32 operation is off by a
relative amount of at most the unit roundoff u = 2**-24 ≈ 6.0e-8. A chain of reductions whose
lengths add up to n (to first order the relative errors of chained, well-conditioned operations add)
therefore carries:

* in the worst case, a relative error of at most n·u per computation (Higham, *Accuracy and
  Stability of Numerical Algorithms*, 2nd ed., §3.1 and §4.2), so two float32 computations of the
  same quantity differ by at most 2·n·u: `worst_case(n)`;
* in practice, rounding errors of independent operations behave like a random walk whose standard
  deviation is about sqrt(n)·u (Higham §2.8); `random_walk(n)` is 8 such deviations, so a correct
  implementation essentially never exceeds it (a Gaussian tail beyond 8σ has probability ~1e-15),
  while any wiring bug (a wrong offset, head, variable or mask) gives errors of order 1.

A test names which bound it uses and computes n from the shapes it compares.
"""
import math

import numpy as np

UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0 ** -24, np.dtype(np.float64): 2.0 ** -53}


def _u(dtype) -> float:
  return UNIT_ROUNDOFF[np.dtype(dtype)]


def worst_case(n: int, dtype=np.float32) -> float:
  """Largest relative difference of two computations of one length-n reduction chain."""
  return 2.0 * n * _u(dtype)


def random_walk(n: int, dtype=np.float32, sigmas: float = 8.0) -> float:
  """`sigmas` standard deviations of the accumulated rounding of a length-n reduction chain."""
  return sigmas * math.sqrt(n) * _u(dtype)


def attention_chain(in_channels: int, head_dim: int, window: int) -> int:
  """Reduction length of one attention output: projection, q·k logit, softmax sum, value sum."""
  return in_channels + head_dim + 2 * window * window


def network_chain(model, pooled_positions: int = 1) -> int:
  """An upper bound on the reduction length along any path through `model`'s forward pass.

  Every kernel's fan-in (a conv's kh·kw·C_in, a dense layer's inputs), every attention layer's
  softmax and value sums over its window, and a final global pooling over `pooled_positions`:
  summing all of them bounds the longest path, since a path meets each layer at most once.
  """
  n = pooled_positions
  for variable in model.trainable_variables:
    if "kernel" in variable.name and len(variable.shape) >= 2:
      n += int(np.prod(variable.shape[:-1]))
  for layer in model.submodules:
    if hasattr(layer, "block_size") and hasattr(layer, "halo_size"):
      window = layer.block_size + 2 * layer.halo_size
      n += 2 * window * window
  return n


def assert_close(got, want, n: int, bound=random_walk, err_msg: str = ""):
  """|got - want| <= bound(n) · max(1, max|want|), elementwise."""
  want = np.asarray(want, np.float64)
  scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=bound(n) * scale,
                             err_msg=err_msg)
