"""liverlab: hyperparameter and ablation experiments for CT -> MRI liver synthesis."""

__version__ = "0.1.0"
