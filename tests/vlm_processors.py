"""Real LLaVA and Qwen2-VL processors built offline, for the tiny models of lora_doctor.measure.multimodal.

* tokenizer: a word-level ``tokenizers`` model (words ``w0``..``w3999``) whose special tokens have the
  ids the tiny configs expect (image token 4000; Qwen2-VL's video / vision start / end 4001-4003);
* chat template: a minimal Jinja one that writes each image placeholder where TRL's
  ``prepare_multimodal_messages`` put an ``{"type": "image"}`` part;
* image processors: transformers' PIL backends (``*ImageProcessorPil``), which need pillow and
  numpy only. The default (torchvision) backends and every video processor import torchvision,
  which is not installed here (it can pull a CUDA torch).

``Qwen2VLProcessor`` declares a video processor and ProcessorMixin type-checks it against
``VideoProcessorMixin``, which transformers exports only with torchvision installed; so
:class:`ImageOnlyQwen2VLProcessor` drops that one attribute. Image inputs take the same code path.
"""

from __future__ import annotations

import pytest

pytest.importorskip("PIL", reason="pillow (test extra) backs transformers' PIL image processors")

from transformers import LlavaProcessor, PreTrainedTokenizerFast, Qwen2VLProcessor  # noqa: E402

from lora_doctor.measure.multimodal import IMAGE_TOKEN  # noqa: E402

SPECIAL_TOKENS = {"llava": ["<image>"],
                  "qwen2_vl": ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]}
IMAGE_PLACEHOLDER = {"llava": "<image>", "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>"}


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without its video processor (which needs torchvision); images work unchanged."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def word_tokenizer(model: str) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = SPECIAL_TOKENS[model] + ["<pad>", "<eos>", "<unk>"]
    vocab = {f"w{i}": i for i in range(IMAGE_TOKEN)} | {s: IMAGE_TOKEN + i for i, s in enumerate(specials)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>")


def chat_template(model: str) -> str:
    return ("{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
            "{% for c in m['content'] %}{% if c['type'] == 'image' %}" + IMAGE_PLACEHOLDER[model] +
            "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} <eos> {% endfor %}")


def llava_processor(side: int = 224) -> LlavaProcessor:
    """CLIP-style: shortest edge to ``side``, center crop ``side`` x ``side``; (side/14)^2 tokens per image."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    ip = LlavaImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    return LlavaProcessor(image_processor=ip, tokenizer=word_tokenizer("llava"), chat_template=chat_template("llava"),
                          patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1)


def qwen2_vl_processor(max_pixels: int = 28 * 28 * 256, min_pixels: int = 28 * 28 * 4) -> ImageOnlyQwen2VLProcessor:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ip = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    return ImageOnlyQwen2VLProcessor(image_processor=ip, tokenizer=word_tokenizer("qwen2_vl"),
                                     chat_template=chat_template("qwen2_vl"))


PROCESSORS = {"llava": llava_processor, "qwen2_vl": qwen2_vl_processor}


def image_dataset(sizes: list[tuple[int, int]], seed: int = 0):
    """A ``datasets.Dataset`` in TRL's conversational VLM format: one random RGB image of each (height, width)
    and a user / assistant exchange in the tokenizer's words."""
    import numpy as np
    from datasets import Dataset
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [[Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))] for h, w in sizes]
    messages = [[{"role": "user", "content": "w1 w2 w3"}, {"role": "assistant", "content": f"w{4 + i} w5 w6"}]
                for i in range(len(sizes))]
    return Dataset.from_dict({"images": images, "messages": messages})
