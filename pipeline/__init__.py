"""pushpilot pipeline."""
