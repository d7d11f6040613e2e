"""rldiff: fine-tune pre-trained diffusion models with reinforcement learning."""

__version__ = "0.1.0"
