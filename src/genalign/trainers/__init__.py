"""Trainers: one self-contained module per method (setup / train / save)."""
