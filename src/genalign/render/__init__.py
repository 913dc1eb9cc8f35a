"""Renderers: a numpy ray caster for part objects and voxel renderers (CPU and CUDA)."""
