"""Training data: read local files, turn each row into TRL's canonical form, and build a datasets.Dataset."""

from .load import load_training_data
from .pipeline import Source
from .readers import Record, iter_records

__all__ = ["Record", "Source", "iter_records", "load_training_data"]
