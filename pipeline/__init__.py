"""Orchestration, above the tiers and the config: the in-memory feature table, training, checkpoints, evaluation,
the run directory, and what ``gen_features.py`` runs. The scripts are thin wrappers around this package."""
