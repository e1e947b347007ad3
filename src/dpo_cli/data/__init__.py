"""Training data: read local files, turn each row into TRL's canonical form, and build a datasets.Dataset."""

from .load import Record, iter_records, load_training_data

__all__ = ["Record", "iter_records", "load_training_data"]
