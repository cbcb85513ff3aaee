"""Training engine: Lightning module, callbacks, run folders, train and evaluate."""

from .evaluate import evaluate, evaluate_model, write_evaluation
from .run import Run, load_model, save_model
from .train import train

__all__ = ["train", "evaluate", "evaluate_model", "write_evaluation", "Run", "load_model", "save_model"]
