"""pushpilot serving."""
