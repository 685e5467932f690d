"""Data sets of the four problems: fetching, checksums, the mirror and preprocessing."""
