"""Example rlx plugin package."""
