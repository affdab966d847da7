"""Many runs: a grid of seeds x folds x module combinations trained batched, its folds, its summary, and searches."""
