"""Surrogate models that rank the candidate pool into the next wave."""
