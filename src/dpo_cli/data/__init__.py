"""Training data: readers, format adapters, checks, --where filters, and the convert-data and inspect-data commands."""
