"""What a person sees: tables, plots, the dashboard, the HTML report, papermill playbooks."""
