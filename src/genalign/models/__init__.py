"""Models: references and loaders, tiny builders, the part DiT and the part codec."""
