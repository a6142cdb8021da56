"""Per-task pre- and post-processing (plain functions over domain types)."""
