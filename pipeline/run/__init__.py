"""One run: the in-memory feature table, the training loop and its resume, the fitted heads, checkpoints, the run
directory's logger (files and wandb) and its plots."""
