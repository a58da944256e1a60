"""umx: Open-Unmix music source separation."""

__version__ = "0.1.0"
