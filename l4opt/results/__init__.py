"""The run directory: results.sqlite and artifacts (store), and reading a run back."""
