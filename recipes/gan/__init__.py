"""Conditional GAN building blocks shared by the calorimeter recipes (SDI-GAN, ExpertSim)."""
