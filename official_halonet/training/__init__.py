"""Training: the gin-configured Model Garden experiments (task, experiment builder, runner)."""
