"""dpo-cli: one YAML recipe to a Hugging Face TRL alignment run."""

__version__ = "0.1.0"
