"""pgolf: train, compress and evaluate Parameter Golf language models."""

__version__ = "0.1.0"
