"""Training: the lifecycle, the Trainer, its callbacks, checkpoints and the run plan."""
