"""From finished runs to conclusions: ``aggregate`` (summary.csv), ``stats`` (the pre-registered tests) and
``report`` (tables, figures and the comparison with published numbers)."""
