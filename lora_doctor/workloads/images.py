"""The largest images a Trainer's processor can hand the model: the worst case the plan takes for images.

The first batch shows one batch's images; a dataset of mixed sizes has larger ones later. When the
trainer holds a processor (``trainer.processing_class.image_processor``, as TRL's SFT for VLMs and
most VLM scripts do), its settings bound every image it will produce. Readers, first match wins:

* dynamic resolution (Qwen2-VL / Qwen2.5-VL: ``patch_size`` and ``merge_size``): images are resized
  to multiples of ``patch_size * merge_size`` within ``max_pixels`` (transformers 5:
  ``size["longest_edge"]``). The worst case is the grid with the most merged tokens that fits in
  ``max_pixels``: a x b cells of ``factor`` pixels with a*b <= max_pixels // factor^2 (and an aspect
  ratio below 200, which ``smart_resize`` requires), the squarest such pair (a square gives 1225
  tokens at the default 28*28*1280, a 32 x 40 grid 1280). Below 200 cells a thin image is worse: ``smart_resize`` keeps each side at least one cell, so a nearly 200:1 image gets
  one row of isqrt(200 * cells - 1) cells, more than ``max_pixels``;
* a center crop (CLIP, LLaVA-1.5): every image becomes ``crop_size``;
* a fixed ``size`` of height x width (SigLIP, Gemma-3 without pan-and-scan).

Other processors (tiling ones: Idefics3, mllama; no resize) give no worst case and the first batch's
images are planned. The tokens per image come from the processor itself
(``processor._get_num_multimodal_tokens``, which LLaVA and Qwen2-VL processors implement) when it
can say; otherwise the planner counts them. Images per sample: the larger of the first batch's and
the longest ``images`` list of an Arrow-backed dataset (an ``image`` column means one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..inputs import qwen_worst_size
from .batch import _arrow_max_length

Size = tuple[int, int]   # (height, width) in pixels


@dataclass(frozen=True)
class ImageWorst:
    size: Size            # (height, width) after the processor's resize
    source: str           # which processor setting bounds it, e.g. "Qwen2VLImageProcessorPil max_pixels=50176"
    bounds: tuple[tuple[str, int], ...] = ()   # the resize bounds the planner must use (min_pixels, max_pixels)


def _field(size: Any, key: str) -> Any:
    """A key of a transformers ``SizeDict`` or a plain dict (older processors)."""
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def _dynamic(ip: Any) -> ImageWorst | None:
    patch, merge = getattr(ip, "patch_size", None), getattr(ip, "merge_size", None)
    if not isinstance(patch, int) or not isinstance(merge, int) or not getattr(ip, "do_resize", True):
        return None
    size = getattr(ip, "size", None)
    max_pixels = getattr(ip, "max_pixels", None) or _field(size, "longest_edge") or _field(size, "max_pixels")
    if not max_pixels:
        return None
    min_pixels = getattr(ip, "min_pixels", None) or _field(size, "shortest_edge") or _field(size, "min_pixels")
    bounds = (("max_pixels", int(max_pixels)),) + ((("min_pixels", int(min_pixels)),) if min_pixels else ())
    return ImageWorst(qwen_worst_size(patch * merge, int(max_pixels)),
                      f"{type(ip).__name__} max_pixels={int(max_pixels)}", bounds)


def _center_crop(ip: Any) -> ImageWorst | None:
    crop = getattr(ip, "crop_size", None)
    h, w = _field(crop, "height"), _field(crop, "width")
    if not getattr(ip, "do_center_crop", False) or not h or not w:
        return None
    return ImageWorst((int(h), int(w)), f"{type(ip).__name__} crop_size={int(w)}x{int(h)}")


def _fixed(ip: Any) -> ImageWorst | None:
    size = getattr(ip, "size", None)
    h, w = _field(size, "height"), _field(size, "width")
    splits = any(getattr(ip, name, None) for name in TILING_FLAGS)   # tiles: the size is one tile's, not the worst
    if not getattr(ip, "do_resize", True) or splits or not h or not w:
        return None
    return ImageWorst((int(h), int(w)), f"{type(ip).__name__} size={int(w)}x{int(h)}")


TILING_FLAGS = ("do_pan_and_scan", "do_image_splitting", "max_image_tiles")   # Gemma-3, Idefics3, mllama
READERS: tuple[Callable[[Any], ImageWorst | None], ...] = (_dynamic, _center_crop, _fixed)


def processor_worst(processor: Any) -> ImageWorst | None:
    """The largest image ``processor`` (a processor with an ``image_processor``, or an image processor) produces."""
    ip = getattr(processor, "image_processor", None)
    if ip is None and "ImageProcessor" in type(processor).__name__:
        ip = processor
    if ip is None:
        return None
    return next((found for read in READERS if (found := read(ip)) is not None), None)


def processor_tokens(processor: Any, size: Size) -> int | None:
    """Tokens per image of ``size`` as ``processor`` writes them into ``input_ids``; None when it cannot say."""
    count = getattr(processor, "_get_num_multimodal_tokens", None)
    if count is None:
        return None
    try:
        tokens = count(image_sizes=[list(size)])["num_image_tokens"][0]
    except Exception:   # a processor built without patch_size etc.: the planner counts instead
        return None
    return int(tokens) if tokens else None


def dataset_images_per_sample(dataset: Any) -> int:
    """Most images in one row of an Arrow-backed dataset (TRL's ``images`` / ``image`` columns); 0 if unknown."""
    columns = getattr(dataset, "column_names", None) or ()
    if "images" in columns:
        try:
            return _arrow_max_length(dataset, "images") or 0
        except Exception:   # not a list column (or not Arrow): the first batch's count stands
            return 0
    return 1 if "image" in columns else 0


def _wxh(size: Size) -> str:
    return f"{size[1]}x{size[0]}"


def worst_images(trainer: Any, inputs: dict) -> tuple[dict, dict | None]:
    """``inputs`` (the first batch's images, or none) raised to the worst case the trainer's processor and
    dataset allow, and a record of what was planned and why (None: no images)."""
    per_sample = max(inputs.get("images_per_sample") or 0,
                     dataset_images_per_sample(getattr(trainer, "train_dataset", None)))
    if not per_sample:
        return inputs, None
    processor = getattr(trainer, "processing_class", None)
    worst = processor_worst(processor) if processor is not None else None
    first = inputs.get("image_size")
    out = {**inputs, "images_per_sample": per_sample}
    if worst is not None:
        out.update(worst.bounds)      # the vision tower is planned with the processor's own resize bounds
    if worst is None:
        source = "the first batch's images" if first else "the planner's default image size for this model"
        ip = getattr(processor, "image_processor", None)
        if ip is not None:
            source += f" ({type(ip).__name__} sets no largest size lora-doctor reads)"
        return out, {"images_per_sample": per_sample, "image_size": first, "source": source}
    if first and first[0] * first[1] > worst.size[0] * worst.size[1]:
        return out, {"images_per_sample": per_sample, "image_size": first,
                     "source": f"the first batch's images, larger than {worst.source} allows"}
    out["image_size"] = worst.size
    tokens = processor_tokens(processor, worst.size)
    if tokens:
        out["image_tokens"] = tokens
    else:
        out.pop("image_tokens", None)
    source = f"the worst case of {worst.source}"
    if first and tuple(first) != worst.size:
        source += f"; the first batch's were {_wxh(first)}"
    return out, {"images_per_sample": per_sample, "image_size": worst.size, "source": source}
