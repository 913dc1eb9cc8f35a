"""Stages of hand_pose."""
