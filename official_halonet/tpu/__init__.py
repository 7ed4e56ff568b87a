"""TPU without a TPU: compile a configuration's real steps with XLA's TPU compiler, on any machine.

  chips.py         Cloud TPU generations: the slice names users type, per-device HBM, peak bfloat16
                   FLOP/s and HBM bandwidth (each cited), the topology the compiler is given
  steps.py         TensorFlow side: the train and eval steps Model Garden's trainer runs, built
                   from the gin configuration under the TPU precision policy, as XLA HLO
  compile_only.py  JAX's half (the pinned jax + libtpu, a process of its own): compiles HLO for a
                   named topology with no TPU attached; the only module that touches JAX's
                   private APIs
  compiler.py      TensorFlow's side of that: runs compile_only.py on one step's HLO
  batch_search.py  the largest per-device train batch that fits, from the compiler's figures
  report.py        what a check found (per step: fits, HBM, FLOP and bytes, the roofline
                   step-time bound), as the console table and as JSON
  check.py         `main.py --mode=tpu_check`: traces the steps, compiles them, searches when the
                   train step does not fit

The package sits above training (it builds Model Garden's trainer) and below main.py.
"""
