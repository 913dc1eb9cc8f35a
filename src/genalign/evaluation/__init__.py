"""Evaluation: metrics that compare generated objects with ground truth, and reports."""
