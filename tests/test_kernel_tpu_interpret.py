"""The fused kernel under TPU semantics on a CPU: Pallas's TPU interpret mode (jax 0.6.0).

tests/kernel_tpu_interpret.py runs the forward and backward kernels twice on the same inputs: in
the plain interpreter that the fused layer's CPU tests go through, and in the TPU interpret mode,
where DMAs land only when their semaphore is waited on, scratch memory starts as NaN, the
'parallel' grid runs in a random order and a race detector watches every access. Same arrays, no
race, nothing non-finite. The pinned JAX's TPU interpret mode models one TensorCore per device:
it cannot split the grid between a v4 or v5p chip's two cores (its `TPUInterpretParams` has no
core count), so that split rests on the grid steps being independent (one partial sum of the
tables' gradient per step, kernels/core.py).
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    # 8×8 query blocks in the map layout (two blocks per step).
    "blocks8": dict(batch=1, blocks_x=2, blocks_y=2, block=8, halo=2, queries=64, heads=2,
                    key_width=8, value_width=8, scale=0.35, position_width=8),
    # strided: 4×4 queries per 8×8 block, rows of 4 read per block.
    "strided": dict(batch=1, blocks_x=1, blocks_y=2, block=8, halo=3, queries=16, heads=2,
                    key_width=8, value_width=8, scale=0.35, position_width=8),
    # H3-H7's blocks of 10: windows start mid-tile, block by block, bfloat16.
    "blocks10": dict(batch=1, blocks_x=1, blocks_y=2, block=10, halo=3, queries=100, heads=1,
                     key_width=8, value_width=16, scale=0.35, position_width=8),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_keeps_tpu_semantics(tmp_path, name):
  request = {"core": CASES[name], "dtype": "bfloat16" if name == "blocks10" else "float32",
             "seed": 11}
  path = tmp_path / "core.json"
  path.write_text(json.dumps(request))
  done = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "kernel_tpu_interpret.py"),
                         str(path)], capture_output=True, text=True, timeout=900, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 0, done.stderr.strip().splitlines()[-3:]
  seen = json.loads(done.stdout.strip().splitlines()[-1])
  assert not seen["races"] and not seen["nonfinite"], seen
  assert seen["forward"] == 0.0 and seen["backward"] == [0.0, 0.0, 0.0], seen
