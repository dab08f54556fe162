"""pal-study: hyperparameter and ablation studies of Prototype-Anchored Learning."""

__version__ = "0.1.0"
