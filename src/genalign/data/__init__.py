"""Data the project generates itself: procedural objects for the tiny presets."""
