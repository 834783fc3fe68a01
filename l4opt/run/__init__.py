"""Running trials: executors (local, Ray) and the sweep."""
