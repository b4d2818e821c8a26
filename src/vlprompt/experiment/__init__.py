"""What an experiment is: its config (schema, validation, defaults, hashes), per-method overrides, and the grid of
runs with every artefact's path (pure functions the Snakefile calls)."""
