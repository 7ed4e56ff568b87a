"""Training: the gin-configured Model Garden experiments (task, experiment builder, runner, and
fused_check.py: a TPU run's fused attention kernel tried on the chip before it is trusted)."""
