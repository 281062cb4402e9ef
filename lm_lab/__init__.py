"""lm_lab: compute-efficient language-model pretraining with Lightning and Hydra."""

__version__ = "0.1.0"
