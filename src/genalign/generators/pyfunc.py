"""MLflow pyfunc models of genalign's generators: a registered adapter that generates,
and a registered hand-pose model that predicts joints.

register-model (and register-hand-pose) logs one beside the model directory, so that

    model = mlflow.pyfunc.load_model("models:/<name>@champion")
    model.predict([{"image": png_bytes, "num_parts": 3, "seed": 0}])     # part-dpo
    model.predict([{"question": "...", "options": [...], "images": [png_bytes]}])  # planner-dpo
    model.predict([{"image": crop_png, "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]}])  # hand-pose

generates with the adapter on its base. The model is MLflow's "model from code": its
code file is `CODE` (three lines that build `GenalignModel`), so nothing is pickled. Its
one artifact is the adapter directory (`artifacts/adapter`: peft files + model card;
MLmodel metadata `genalign.model` names it, which is how `genalign.models.refs.resolve`
finds it too). `load_context` puts the adapter on its base through genalign's own
loaders, resolving the card's `base_model` reference (a registered base, tiny://, hf://,
s3://), so the loading machine needs genalign installed and the tracking server (or hub,
or bucket) that reference names; heavy imports happen there, not at import.

Rows (a list of dicts, one dict, or a pandas DataFrame):

- part generator (card arch "part-generator"): {image, num_parts, seed (default 0)};
  `image` is PNG/JPEG bytes, their base64 text, or an HxWx3 uint8 array (nested lists).
  Out, one per row: {num_parts, seed, latent [P][T][D], parts [PartParams dicts],
  glb (base64 of the part meshes as GLB, one node per part), error (None, or why the
  latent did not decode)}. params: steps, guidance (default: the evaluation's).
- planner (arch "qwen-vl"): {question, options (optional), images [image, ...], id
  (optional)}; out, one per row: the plan text (a list of `k` texts when k > 1). params:
  k, temperature (default 0: greedy), max_new_tokens, seed.
- hand-pose model (arch "hand-pose", a model directory, not an adapter): {image, K}: a
  hand-centred square crop of the model's image size (a right hand; mirror a left one)
  and its 3x3 intrinsics in pixels. Out, one per row: {joints_cam_mm [21][3] (camera
  frame, millimetres, DexYCB's joint order), joints2d [21][2] (crop pixels)}.
"""

from __future__ import annotations

import base64
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from genalign.artifacts import ArtifactError, read_model_card

# The pyfunc model's code file: MLflow runs it to build the model (models from code).
CODE = (
    "from mlflow.models import set_model\n\n"
    "from genalign.generators.pyfunc import GenalignModel\n\n"
    "set_model(GenalignModel())\n"
)
ADAPTER_ARTIFACT = "adapter"
# The generation settings of each arch, with their defaults: `predict`'s params (declared
# in the model's signature, so MLflow passes them through; the defaults of a saved model
# are these updated with `save_pyfunc`'s `config`).
SETTINGS: dict[str, dict[str, int | float]] = {
    "part-generator": {"steps": 20, "guidance": 2.0},
    "qwen-vl": {"k": 1, "temperature": 0.0, "max_new_tokens": 256, "seed": 0},
    "hand-pose": {},
}
ARCHS = tuple(SETTINGS)
# What the model needs installed beside genalign, when present here (pinned to this version).
REQUIREMENTS = ("torch", "peft", "safetensors", "transformers", "trimesh", "manifold3d", "pillow", "numpy", "pyyaml")


class GenalignModel(mlflow.pyfunc.PythonModel):
    """A genalign adapter on its base, as an MLflow pyfunc model (see the module docstring)."""

    def load_context(self, context) -> None:
        adapter = Path(context.artifacts[ADAPTER_ARTIFACT])
        self.card = read_model_card(adapter)
        self.config = dict(context.model_config or {})
        if self.card.arch == "part-generator":
            from genalign.generators.parts import generator_from_ref

            self.generator = generator_from_ref(adapter)
        elif self.card.arch == "qwen-vl":
            from genalign.models.refs import base_and_adapter
            from genalign.models.vlm import load_vlm

            base, adapter_dir = base_and_adapter(adapter)
            self.vlm = load_vlm(base, adapter_dir=adapter_dir)
        elif self.card.arch == "hand-pose":
            from genalign.models.hand_pose import load_hand_pose

            self.hand_pose, self.hand_pose_config = load_hand_pose(adapter)
            self.hand_pose.eval()
        else:
            raise ArtifactError(f"{adapter}: arch {self.card.arch!r}; this pyfunc generates for {list(ARCHS)}")

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list:
        rows = _rows(model_input)
        settings = {**SETTINGS[self.card.arch], **self.config, **(params or {})}
        if self.card.arch == "part-generator":
            return self._parts(rows, settings)
        if self.card.arch == "hand-pose":
            return self._joints(rows)
        return self._plans(rows, settings)

    def _joints(self, rows: list[dict]) -> list[dict]:
        import numpy as np
        import torch

        size = self.hand_pose_config.image_size
        images, Ks = [], []
        for i, row in enumerate(rows):
            if "image" not in row or "K" not in row:
                raise KeyError(f"row {i}: needs 'image' (a hand-centred crop) and 'K' (its 3x3 intrinsics)")
            image = _image_array(row["image"], i)
            if image.shape[:2] != (size, size):
                raise ValueError(f"row {i}: image is {image.shape[1]}x{image.shape[0]}; the model reads "
                                 f"{size}x{size} hand-centred crops")
            K = np.asarray(row["K"], dtype=np.float32)
            if K.shape != (3, 3):
                raise ValueError(f"row {i}: K must be 3x3, got shape {list(K.shape)}")
            images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)
            Ks.append(torch.from_numpy(K))
        with torch.no_grad():
            out = self.hand_pose(torch.stack(images), torch.stack(Ks))
        return [{"joints_cam_mm": cam.tolist(), "joints2d": px.tolist()}
                for cam, px in zip(out.joints_cam.double(), out.joints2d.double())]

    def _parts(self, rows: list[dict], settings: dict) -> list[dict]:
        from genalign.models.part_codec import decode_parts, part_mesh, save_glb

        for i, row in enumerate(rows):
            if "image" not in row or "num_parts" not in row:
                raise KeyError(f"row {i}: needs 'image' and 'num_parts' (and optionally 'seed')")
        images = [_image_array(row["image"], i) for i, row in enumerate(rows)]
        seeds = [int(row.get("seed", 0) or 0) for row in rows]
        latents = self.generator.sample(
            self.generator.encode_images(images), [int(row["num_parts"]) for row in rows], seeds,
            steps=int(settings["steps"]), guidance=float(settings["guidance"]),
        )
        out = []
        with tempfile.TemporaryDirectory(prefix="genalign-pyfunc-") as scratch:
            for i, (latent, seed) in enumerate(zip(latents, seeds)):
                item: dict[str, Any] = {"num_parts": int(latent.shape[0]), "seed": seed,
                                        "latent": latent.tolist(), "parts": None, "glb": None, "error": None}
                try:
                    parts = decode_parts(latent.numpy())
                    path = Path(scratch) / f"{i}.glb"
                    save_glb([part_mesh(p) for p in parts], path)
                    item["parts"] = [p.to_dict() for p in parts]
                    item["glb"] = base64.b64encode(path.read_bytes()).decode("ascii")
                except Exception as e:  # noqa: BLE001 - a latent that does not decode is reported, not raised
                    item["error"] = f"decode: {e}"
                out.append(item)
        return out

    def _plans(self, rows: list[dict], settings: dict) -> list:
        from PIL import Image

        from genalign.config.planner import PlannerSamplingConfig
        from genalign.generators.planner import PlannerSampler

        k = int(settings["k"])
        sampling = PlannerSamplingConfig(
            k=k, temperature=float(settings["temperature"]),
            max_new_tokens=int(settings["max_new_tokens"]), batch_size=min(k, 8), seed=int(settings["seed"]),
        )
        model, processor = self.vlm
        with tempfile.TemporaryDirectory(prefix="genalign-pyfunc-") as scratch:
            planner_rows = []
            for i, row in enumerate(rows):
                if "question" not in row or not row.get("images"):
                    raise KeyError(f"row {i}: needs 'question' and 'images' (and optionally 'options', 'id')")
                names = []
                for j, image in enumerate(row["images"]):
                    name = f"{i}_{j}.png"
                    Image.fromarray(_image_array(image, i)).save(Path(scratch) / name)
                    names.append(name)
                planner_rows.append({"id": str(row.get("id", i)), "question": row["question"],
                                     "options": list(row.get("options") or []), "images": names})
            plans = PlannerSampler(model, processor, sampling).sample(planner_rows, root=scratch)
        return [p[0] if k == 1 else p for p in plans]


def _rows(model_input) -> list[dict]:
    if isinstance(model_input, dict):
        return [model_input]
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a pandas DataFrame
        return model_input.to_dict(orient="records")
    rows = list(model_input)
    if not all(isinstance(r, dict) for r in rows):
        raise TypeError("expected rows: a list of dicts, one dict, or a pandas DataFrame")
    return rows


def _image_array(image, row: int):
    """An HxWx3 uint8 array from image bytes, their base64 text, or an array."""
    import numpy as np
    from PIL import Image

    if isinstance(image, str):
        image = base64.b64decode(image)
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as im:
            return np.asarray(im.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"row {row}: image must be HxWx3, got shape {list(array.shape)}")
    return array.astype(np.uint8)


def save_pyfunc(out: Path, adapter: Path, *, config: dict[str, Any] | None = None) -> Path:
    """Write the pyfunc model of the adapter directory `adapter` (its card names its base)
    into `out`, which must not exist yet; `config`: default generation settings."""
    import importlib.metadata

    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    from genalign.models.refs import PYFUNC_MODEL_KEY

    card = read_model_card(adapter)
    if card.arch not in ARCHS:
        raise ArtifactError(f"{adapter}: arch {card.arch!r}; a pyfunc model is made for {list(ARCHS)}")
    unknown = sorted(set(config or {}) - set(SETTINGS[card.arch]))
    if unknown:
        raise ValueError(f"config: unknown setting(s) {unknown} for arch {card.arch!r}; valid: {sorted(SETTINGS[card.arch])}")
    defaults = {k: type(v)(config.get(k, v) if config else v) for k, v in SETTINGS[card.arch].items()}
    # a model without settings (hand-pose) has no signature: MLflow refuses an empty one
    signature = ModelSignature(inputs=None, params=ParamSchema([
        ParamSpec(k, "long" if isinstance(v, int) else "double", v) for k, v in defaults.items()
    ])) if defaults else None
    requirements = []
    for name in ("genalign", *REQUIREMENTS):
        try:
            requirements.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    with tempfile.TemporaryDirectory(prefix="genalign-pyfunc-") as scratch:
        code = Path(scratch) / "genalign_model.py"
        code.write_text(CODE)
        staged = Path(scratch) / ADAPTER_ARTIFACT  # MLflow keeps the folder's name: artifacts/adapter
        shutil.copytree(adapter, staged)
        mlflow.pyfunc.save_model(
            path=str(out), python_model=str(code), artifacts={ADAPTER_ARTIFACT: str(staged)},
            model_config={"arch": card.arch, **defaults}, signature=signature, pip_requirements=requirements,
            metadata={PYFUNC_MODEL_KEY: f"artifacts/{ADAPTER_ARTIFACT}"},
        )
    return Path(out)
