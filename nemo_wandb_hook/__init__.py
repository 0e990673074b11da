"""Get NeMo Evaluator results from Slurm clusters into Weights & Biases, reliably."""

from nemo_wandb_hook.pipeline import ExportReport, TaskOutcome, export_results

__all__ = ["ExportReport", "TaskOutcome", "export_results"]
__version__ = "0.1.0"
