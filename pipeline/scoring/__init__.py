"""Scoring: a checkpoint on a dataset split, on new videos (with the fitted transforms it carries), explained,
and zero-shot scores of a pretrained model."""
