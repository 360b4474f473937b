"""mlprunner: a config-driven experiment runner for PyTorch MLPs (`mlprun`)."""

__version__ = "0.1.0"
