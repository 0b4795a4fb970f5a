"""Membership and dataset inference on diffusion models (issue 20)."""
