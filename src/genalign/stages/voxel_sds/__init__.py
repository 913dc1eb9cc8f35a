"""Stages of voxel_sds."""
