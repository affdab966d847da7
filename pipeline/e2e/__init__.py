"""End-to-end training: clips decoded and HRNet / CSN run inside the step (its data, clip loading and loop)."""
