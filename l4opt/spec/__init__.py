"""What a trial is made of: workloads and their loader, recipes, shapes, safe names and the row type."""
