"""pushpilot models."""
