"""Stages of part_dpo."""
