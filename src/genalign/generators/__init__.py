"""Generators: sample candidates from a policy (part latents from the part DiT, ...)."""
