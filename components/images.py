"""Container images the components run in: one place, overridable from the environment.

A cluster with its own registry sets `GENALIGN_IMAGE_REGISTRY` (and optionally
`GENALIGN_IMAGE_TAG`) when compiling, or names each image in full with
`GENALIGN_IMAGE_CPU` / `GENALIGN_IMAGE_CUDA` / `GENALIGN_IMAGE_RENDER`. Releases pin
them by digest.
"""

import os

REGISTRY = os.environ.get("GENALIGN_IMAGE_REGISTRY", "ghcr.io/genalign")
TAG = os.environ.get("GENALIGN_IMAGE_TAG", "0.1.0")

# torch CPU build + genalign: light stages and the tiny presets
CPU = os.environ.get("GENALIGN_IMAGE_CPU", f"{REGISTRY}/genalign-cpu:{TAG}")
# CUDA torch + deepspeed + genalign: rollout, training, evaluation on GPUs
CUDA = os.environ.get("GENALIGN_IMAGE_CUDA", f"{REGISTRY}/genalign-cuda:{TAG}")
# CUDA image + nvdiffrast: voxel rendering
RENDER = os.environ.get("GENALIGN_IMAGE_RENDER", f"{REGISTRY}/genalign-render:{TAG}")

ALL = {"cpu": CPU, "cuda": CUDA, "render": RENDER}
