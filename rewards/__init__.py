"""Reward-model ensembles (aggregation, transforms, best-of-n) shared by trainers, decoding and
evaluation. Methods land here as their issues are resolved (see README)."""
