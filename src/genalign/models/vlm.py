"""Vision-language models of the Qwen-VL family: loading and chat-formatted inputs.

    model, processor = load_vlm(model_dir, adapter_dir=None, device="cpu")
    batch = chat_inputs(processor, images, "Which object is behind the red cube?", answer="B")
    logits = model(**batch.inputs).logits  # logits[0, p - 1] predicts the token at p
    answer_ids = batch.inputs["input_ids"][0, batch.answer_positions]

The family comes from `model_type` in the directory's config.json and is looked up in
`FAMILIES` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE); anything else is an error that
names the file and the supported types. The processor is the family's stock processor
without its video processor: the planner and the critic see images only, and the stock
video processors need torchvision, which this project does not install.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from genalign.storage import ArtifactError

if TYPE_CHECKING:
    import torch
    from PIL import Image


class VLMFamily(NamedTuple):
    """transformers class names of one Qwen-VL generation."""

    model_class: str
    processor_class: str


# config.json model_type -> classes (transformers 5 names; Qwen3-VL-MoE shares Qwen3-VL's
# processor, as in transformers' AutoProcessor table).
FAMILIES: dict[str, VLMFamily] = {
    "qwen2_vl": VLMFamily("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
    "qwen2_5_vl": VLMFamily("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    "qwen3_vl": VLMFamily("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
    "qwen3_vl_moe": VLMFamily("Qwen3VLMoeForConditionalGeneration", "Qwen3VLProcessor"),
}

DTYPES = ("auto", "float32", "bfloat16", "float16")


class VLMConfigError(ValueError):
    """A model directory whose config.json is missing, unreadable or of an unsupported type."""


def model_type(model_dir: Path | str) -> str:
    """The supported `model_type` of the model in `model_dir` (read from its config.json)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise VLMConfigError(f"{path}: missing; not a transformers model directory")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise VLMConfigError(f"{path}: invalid JSON (line {e.lineno}: {e.msg})") from e
    if not isinstance(config, dict) or "model_type" not in config:
        raise VLMConfigError(f"{path}: no 'model_type' field")
    found = config["model_type"]
    if found not in FAMILIES:
        raise VLMConfigError(
            f"{path}: model_type {found!r} is not a supported vision-language model; "
            f"supported: {sorted(FAMILIES)}"
        )
    return found


def processor_class(model_type: str) -> type:
    """The family's processor class with images and text only (no video processor)."""
    if model_type not in FAMILIES:
        raise VLMConfigError(f"model_type {model_type!r}: supported are {sorted(FAMILIES)}")
    import transformers

    base = getattr(transformers, FAMILIES[model_type].processor_class)

    # ProcessorMixin takes its sub-processors from the parameter names of __init__, so
    # leaving `video_processor` out of the signature leaves it out of loading and saving.
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    # The stock class name, so that the saved processor_config.json names a class that
    # AutoProcessor knows where torchvision is installed.
    return type(
        base.__name__,
        (base,),
        {"__init__": __init__, "__qualname__": f"images_only({base.__name__})"},
    )


def load_vlm(
    model_dir: Path | str,
    *,
    adapter_dir: Path | str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
) -> tuple[Any, Any]:
    """Load a Qwen-VL model and its processor from a local directory, in eval mode.

    With `adapter_dir`, the model is wrapped in that peft adapter (a `PeftModel`; call
    `merge_and_unload()` for a plain model). `dtype`: one of DTYPES; None keeps float32
    on CPU and uses the checkpoint's dtype ("auto") elsewhere.
    """
    import torch
    import transformers

    model_dir = Path(model_dir)
    kind = model_type(model_dir)
    if dtype is None:
        dtype = "float32" if str(device) == "cpu" else "auto"
    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {list(DTYPES)}")
    model_cls = getattr(transformers, FAMILIES[kind].model_class)
    model = model_cls.from_pretrained(
        model_dir, dtype=dtype if dtype == "auto" else getattr(torch, dtype)
    )
    if adapter_dir is not None:
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ArtifactError(
                f"{adapter_dir / 'adapter_config.json'}: missing; not a peft adapter"
            )
        model = PeftModel.from_pretrained(model, adapter_dir)
    model = model.to(device).eval()
    processor = processor_class(kind).from_pretrained(model_dir)
    return model, processor


class ChatInputs(NamedTuple):
    """Model inputs of one chat turn; `answer_positions` index the answer's tokens in
    `inputs["input_ids"][0]` (None without an answer)."""

    inputs: dict[str, torch.Tensor]
    answer_positions: torch.Tensor | None


def messages(n_images: int, text: str) -> list[dict]:
    """One user turn: the images first, then the text (Qwen-VL's documented order)."""
    content: list[dict] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def prompt_text(processor: Any, n_images: int, text: str) -> str:
    """The chat-formatted prompt string, ending with the assistant header."""
    return processor.apply_chat_template(
        messages(n_images, text), tokenize=False, add_generation_prompt=True
    )


def chat_inputs(
    processor: Any,
    images: list[Image.Image],
    text: str,
    *,
    answer: str | None = None,
) -> ChatInputs:
    """Tensors for one user turn (images, then `text`) in the chat template, batch size 1.

    Without `answer` the inputs end with the assistant header, ready for `generate`. With
    it, the answer's tokens follow the header (tokenized on their own, as trl tokenizes
    prompt and completion) and their positions are returned: the log-probability of the
    token at position p is read from the logits at p - 1.
    """
    import torch

    prompt = prompt_text(processor, len(images), text)
    enc = processor(images=list(images) or None, text=[prompt], return_tensors="pt")
    inputs = dict(enc)
    if answer is None:
        return ChatInputs(inputs, None)
    if not answer:
        raise ValueError("chat_inputs: answer is empty; pass None for a prompt only")
    answer_ids = processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt")[
        "input_ids"
    ]  # [1, A]
    start = inputs["input_ids"].shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], answer_ids], dim=1)
    inputs["attention_mask"] = torch.cat(
        [inputs["attention_mask"], torch.ones_like(answer_ids)], dim=1
    )
    if "mm_token_type_ids" in inputs:  # 0 = text token
        inputs["mm_token_type_ids"] = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros_like(answer_ids)], dim=1
        )
    return ChatInputs(inputs, torch.arange(start, start + answer_ids.shape[1]))
