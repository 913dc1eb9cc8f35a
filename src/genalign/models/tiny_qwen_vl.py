"""Tiny Qwen2-VL: a random-init `Qwen2VLForConditionalGeneration` built from a config, with
a byte-level BPE tokenizer trained in-process, for tests and the tiny planner-dpo preset.

    from genalign.models.tiny_qwen_vl import build_tiny_qwen2_vl
    build_tiny_qwen2_vl("out/tiny-qwen2-vl", seed=0)
    model, processor = genalign.models.vlm.load_vlm("out/tiny-qwen2-vl")

or `genalign.models.refs.resolve("tiny://tiny-qwen2-vl")`. The directory has the layout of a
real Qwen2-VL checkpoint (config.json, model.safetensors, generation_config.json,
tokenizer.json + tokenizer_config.json with Qwen's special tokens, chat_template.jinja,
preprocessor_config.json), so the tiny model and a real one load through the same
`load_vlm`. The tokenizer is trained on planner-style text (the plan tags, the instruction
vocabulary of the synthetic world, spatial questions with option letters, the critic's
1-10 question) plus the caller's `vocab_texts`; its pre-tokenisation and normalisation
are those of Qwen2's tokenizer.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from genalign.artifacts import MODEL, ModelCard, write_model_card
from genalign.storage import atomic_dir

# Qwen2-VL's added tokens, in the order of its tokenizer (ids 151643.. there; 0.. here).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2-VL-Instruct's chat template (its tokenizer_config.json), unchanged.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenisation regex (transformers' Qwen2Tokenizer).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Sizes. Text: width 64, 4 heads of 16 -> rotary half-dim 8 = the mrope sections
# (temporal, height, width) [2, 3, 3]. Vision: 8x8 patches, 2x2 merged, so a 64x64 image is
# 8x8 patches -> 16 LLM tokens; max_pixels caps every image at that.
VOCAB_SIZE = 1024
TEXT_HIDDEN = 64
TEXT_LAYERS = 2
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
TEXT_INTERMEDIATE = 128
MROPE_SECTION = [2, 3, 3]
VISION_EMBED = 32
VISION_DEPTH = 1
VISION_HEADS = 2
PATCH = 8
MERGE = 2
TEMPORAL_PATCH = 2
MIN_PIXELS = 32 * 32
MAX_PIXELS = 64 * 64
MAX_POSITIONS = 4096

# The synthetic world's vocabulary (shared contracts): instructions, objects, questions.
COLORS = (
    "red",
    "blue",
    "green",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "gray",
    "brown",
    "pink",
    "cyan",
)
SHAPES = ("cube", "sphere", "cylinder", "cone", "pyramid", "torus", "capsule", "box", "ball")
SIDES = ("front", "back", "left", "right")
RELATIONS = (
    "behind",
    "in front of",
    "left of",
    "right of",
    "above",
    "below",
    "next to",
    "on top of",
    "under",
    "closest to",
    "farthest from",
)
REASONS = (
    "is hidden by",
    "is occluded by",
    "is hard to see next to",
    "may be behind",
    "overlaps with",
    "is too small compared to",
    "is partly covered by",
)


def corpus() -> list[str]:
    """Planner-, critic- and question-style lines the built-in tokenizer is trained on."""
    objects = [f"{c} {s}" for c, s in itertools.product(COLORS, SHAPES)]
    instructions = [f"view from the {s}" for s in (*SIDES, "top")]
    instructions += [f"view from the {s} at a {a} angle" for s in SIDES for a in ("high", "low")]
    instructions += [f"zoom {d} on the {o}" for d in ("in", "out") for o in objects]
    lines = list(instructions)
    for i, inst in enumerate(instructions):
        other = instructions[(7 * i + 3) % len(instructions)]
        lines.append(
            f"<thinking>The {objects[i % len(objects)]} {REASONS[i % len(REASONS)]} the "
            f"{objects[(3 * i + 1) % len(objects)]}; another view shows what is "
            f"{RELATIONS[i % len(RELATIONS)]} it.</thinking><instructions>"
            f"<instruction>{inst}</instruction>"
            f"<instruction>{other}</instruction></instructions>"
        )
    lines.append("<thinking></thinking><instructions></instructions>")
    for i, (a, rel) in enumerate(itertools.product(objects, RELATIONS)):
        b, c = objects[(i * 5 + 1) % len(objects)], objects[(i * 11 + 2) % len(objects)]
        lines.append(f"Which object is {rel} the {a}?")
        lines.append(f"Is the {b} {rel} the {a}? A. yes B. no")
        lines.append(f"Options: A. {a} B. {b} C. {c} D. none of them. Answer: {'ABCD'[i % 4]}")
        lines.append(f"Question: What is directly {rel} the {c}?\nA. {b}\nB. {a}\nC. nothing")
    lines += [
        (
            "Look at the images of the scene and the question. Ask for new images that would "
            "help answer the question: another viewpoint, angle or distance."
        ),
        (
            "Write your reasoning in <thinking></thinking>, then each request in "
            "<instruction></instruction> inside <instructions></instructions>."
        ),
        (
            "How much does the new image help answer the spatial question? Reply with a "
            "number from 1 to 10."
        ),
        "Answer with the option letter. The answer is A. B. C. D.",
        " ".join(str(n) for n in range(101)),
        "Score: 1 2 3 4 5 6 7 8 9 10. The image helps a lot. The image does not help.",
        (
            "camera viewpoint angle distance closer farther higher lower rotate around the "
            "scene table floor object objects count how many which where color shape size "
            "small large big tall short near far first second third image images picture"
        ),
        "You are a helpful assistant. system user assistant",
    ]
    return lines


def train_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE `tokenizers.Tokenizer` with Qwen2's pipeline and special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def build_tokenizer(vocab_texts: list[str] | None = None):
    """The tiny model's tokenizer: a `PreTrainedTokenizerFast` with Qwen2-VL's special tokens
    and chat template (eos <|im_end|>, pad <|endoftext|>, as Qwen2-VL-Instruct)."""
    from transformers import PreTrainedTokenizerFast

    tok = train_tokenizer(corpus() + list(vocab_texts or []))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[
            t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")
        ],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_tiny_qwen2_vl(
    out_dir: Path | str, *, seed: int = 0, vocab_texts: list[str] | None = None
) -> Path:
    """Save a random-init tiny Qwen2-VL (fixed seed) with its tokenizer and processor.

    Returns `out_dir`; `genalign.models.vlm.load_vlm(out_dir)` reloads it. Deterministic:
    the same seed and texts give the same tokenizer and weights.
    """
    import torch
    from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from genalign.models.vlm import processor_class

    tokenizer = build_tokenizer(vocab_texts)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": TEXT_INTERMEDIATE,
            "num_hidden_layers": TEXT_LAYERS,
            "num_attention_heads": TEXT_HEADS,
            "num_key_value_heads": TEXT_KV_HEADS,
            "max_position_embeddings": MAX_POSITIONS,
            "max_window_layers": TEXT_LAYERS,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": MROPE_SECTION,
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": VISION_DEPTH,
            "embed_dim": VISION_EMBED,
            "hidden_size": TEXT_HIDDEN,  # the merger projects to the LLM width
            "num_heads": VISION_HEADS,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": TEMPORAL_PATCH,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    # A private RNG stream: building the model must not move the caller's global seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).eval()
    # Qwen2-VL-Instruct stops on <|im_end|> or <|endoftext|>.
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH,
        merge_size=MERGE,
        temporal_patch_size=TEMPORAL_PATCH,
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
    )
    processor = processor_class("qwen2_vl")(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_model_card(
            tmp,
            ModelCard(
                kind=MODEL,
                arch="qwen-vl",
                method="random_init",
                config={"builder": "tiny-qwen2-vl", "seed": seed, "vocab_texts": len(vocab_texts or [])},
            ),
        )
    return out_dir
