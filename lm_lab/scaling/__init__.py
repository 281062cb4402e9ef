"""Compute budgets, scaling laws and the compute-optimal planner."""
