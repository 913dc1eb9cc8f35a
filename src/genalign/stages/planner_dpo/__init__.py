"""Stages of planner_dpo."""
