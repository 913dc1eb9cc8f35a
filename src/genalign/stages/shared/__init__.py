"""Stages of shared."""
