"""Recipes built on the public API of `interventions`."""
