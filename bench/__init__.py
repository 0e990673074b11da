"""Benchmarks: nemo-wandb-hook against nemo-evaluator-launcher 0.2.6's W&B exporter."""
