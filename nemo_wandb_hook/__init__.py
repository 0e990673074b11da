"""Get NeMo Evaluator results from Slurm clusters into Weights & Biases, reliably."""

from nemo_wandb_hook.pipeline import export_results
from nemo_wandb_hook.report import ExportReport, TaskOutcome

__all__ = ["ExportReport", "TaskOutcome", "export_results"]
__version__ = "0.1.0"
