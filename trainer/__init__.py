"""Runs the training steps and owns the run's state (weights, optimizer, schedule, data position)."""
