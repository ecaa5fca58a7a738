"""The bottom layer: recipe schema, errors, atomic writes, the run directory and the report schema."""
