"""modelcycle: a deep-learning model's whole life on one machine."""

__version__ = "0.1.0"
