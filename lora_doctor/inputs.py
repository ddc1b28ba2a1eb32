"""The input axis: images and audio per sample, for vision-language and speech models.

``make_inputs`` validates what a user gave ``plan()`` (types and ranges); ``plan_inputs`` checks it
against the model's towers and turns it into token counts, as each model's processor would:

* LLaVA-1.5: CLIP resizes to 336 x 336 -> 24 x 24 = 576 patches (+ CLS in the tower), 576 tokens.
* Gemma-3: SigLIP at 896 x 896 -> 4096 patches, average-pooled to 256 tokens (``mm_tokens_per_image``).
* Qwen2-VL / Qwen2.5-VL: ``smart_resize`` to multiples of 28 within [min_pixels, max_pixels]
  (processor defaults 56*56 and 28*28*1280), 14 x 14 patches, 2 x 2 merged per token.
* Idefics3 / SmolVLM: the longest edge resized to 4 tiles, split into tiles of the tower's
  image size plus one global tile; each tile gives (side / patch)^2 / scale_factor^2 tokens.
* Llama-3.2-Vision (mllama): the processor pads every image to ``max_num_tiles`` tiles of
  (side / patch)^2 + 1 patches (padding tiles are masked, not skipped), and the vision tower pads
  each tile to a multiple of 8 patches; the image reaches the text through cross-attention over
  ``max_num_tiles x ((side / patch)^2 + 1)`` vision tokens, one ``<|image|>`` token in the sequence.
* Whisper: the feature extractor pads every clip to 30 s = 3000 mel frames; the conv front-end
  (stride 2) gives 1500 encoder frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .arch import ArchSpec
from .errors import InvalidSettingError
from .plan_types import InputSettings
from .towers import TOWER_LAYOUTS, TowerSpec, tower

QWEN_MIN_PIXELS = 56 * 56          # Qwen2VLImageProcessor defaults (transformers 5)
QWEN_MAX_PIXELS = 28 * 28 * 1280
QWEN_MAX_ASPECT = 200              # smart_resize refuses images whose sides differ by this factor or more
MAX_PIXELS_BOUND = 1 << 30         # a 32k x 32k image: larger is a typo, not a processor setting
WHISPER_WINDOW_SECONDS = 30.0


def make_inputs(images_per_sample: int = 0, image_size: "tuple[int, int] | None" = None,
                image_tokens: int | None = None, audio_seconds: float | None = None,
                min_pixels: int | None = None, max_pixels: int | None = None) -> InputSettings:
    """Validate the input axis on its own (the model-dependent checks are in :func:`plan_inputs`)."""
    problems = []
    if isinstance(images_per_sample, bool) or not isinstance(images_per_sample, int) or images_per_sample < 0:
        problems.append(f"images_per_sample must be a non-negative integer, got {images_per_sample!r}")
    if image_size is not None:
        ok = isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)
        if not ok:
            problems.append(f"image_size must be (height, width) in pixels, got {image_size!r}")
        else:
            image_size = (int(image_size[0]), int(image_size[1]))
    if image_tokens is not None and (isinstance(image_tokens, bool) or not isinstance(image_tokens, int)
                                     or image_tokens <= 0):
        problems.append(f"image_tokens must be a positive integer, got {image_tokens!r}")
    if audio_seconds is not None and (isinstance(audio_seconds, bool) or not isinstance(audio_seconds, (int, float))
                                      or not audio_seconds > 0):
        problems.append(f"audio_seconds must be a positive number, got {audio_seconds!r}")
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0
                                  or value > MAX_PIXELS_BOUND):
            problems.append(f"{name} must be a positive integer of pixels (at most {MAX_PIXELS_BOUND}), got {value!r}")
    if not problems and min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        problems.append(f"min_pixels ({min_pixels}) is larger than max_pixels ({max_pixels})")
    if not problems and images_per_sample == 0 and any(v is not None for v in (image_size, image_tokens,
                                                                                min_pixels, max_pixels)):
        problems.append("image_size / image_tokens / min_pixels / max_pixels describe images: set "
                        "images_per_sample >= 1 too")
    if problems:
        raise InvalidSettingError("; ".join(problems))
    return InputSettings(images_per_sample, image_size, image_tokens,
                         float(audio_seconds) if audio_seconds is not None else None, min_pixels, max_pixels)


def parse_image_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` (width x height, as image sizes are written) -> (height, width) = (768, 1024)."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InvalidSettingError(f"image size must be WIDTHxHEIGHT in pixels, e.g. 1024x768, got {text!r}")
    return int(parts[1]), int(parts[0])


@dataclass(frozen=True)
class InputPlan:
    """Per-sample token counts the engines plan with."""

    images: int = 0
    lm_tokens_per_image: int = 0      # tokens each image adds to the language model's sequence
    vision_seq_per_image: int = 0     # tokens the vision tower runs over per image (patches, all tiles)
    planned_size: tuple[int, int] | None = None   # (height, width) after the processor's resize
    cross_tokens_per_image: int = 0   # vision tokens the language model cross-attends to per image (mllama)
    pixels_per_image: int = 0         # pixel positions per image in pixel_values (all tiles; Qwen: x temporal)
    audio_frames: int = 0             # encoder frames after the conv front-end (Whisper: 1500)
    mel_frames: int = 0               # mel frames into the conv front-end (Whisper: 3000)
    notes: tuple[str, ...] = ()

    @property
    def lm_image_tokens(self) -> int:
        return self.images * self.lm_tokens_per_image


@dataclass(frozen=True)
class _ImageCount:
    lm_tokens: int
    vision_seq: int
    size: tuple[int, int] | None
    notes: tuple[str, ...] = ()
    cross_tokens: int = 0
    pixels: int = 0           # pixel positions per image the processor returns (x channels, fp32)


def _resize_note(size: tuple[int, int] | None, to: tuple[int, int], who: str) -> tuple[str, ...]:
    if size is None or size == to:
        return ()
    return (f"images of {size[1]}x{size[0]} are resized to {to[1]}x{to[0]} by the {who} processor: "
            "planned at the resized shape",)


def _fixed_square(v: TowerSpec, size: tuple[int, int] | None, who: str, cls_token: int) -> _ImageCount:
    side, patch = v.image_size, max(v.patch_size, 1)
    patches = (side // patch) ** 2
    return _ImageCount(v.tokens_per_image or patches, patches + cls_token, (side, side),
                       _resize_note(size, (side, side), who), pixels=side * side)


def _llava(v: TowerSpec, size: tuple[int, int] | None) -> _ImageCount:
    return _fixed_square(v, size, "CLIP", cls_token=1)


def _gemma3(v: TowerSpec, size: tuple[int, int] | None) -> _ImageCount:
    return _fixed_square(v, size, "SigLIP (Gemma-3, pan-and-scan off)", cls_token=0)


def smart_resize(height: int, width: int, factor: int, min_pixels: int = QWEN_MIN_PIXELS,
                 max_pixels: int = QWEN_MAX_PIXELS) -> tuple[int, int]:
    """Qwen2-VL's resize (transformers ``qwen2_vl.image_processing_qwen2_vl.smart_resize``)."""
    if max(height, width) / min(height, width) > 200:
        raise InvalidSettingError(f"image aspect ratio must be below 200 for Qwen2-VL, got {height}x{width}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def most_cells(cells: int, max_aspect: int = QWEN_MAX_ASPECT) -> tuple[int, int]:
    """(a, b), a <= b, b / a below ``max_aspect``: the largest a*b <= ``cells``; among equals, the squarest."""
    best = (1, 1)
    for a in range(1, math.isqrt(cells) + 1):
        b = min(cells // a, max_aspect * a - 1)
        if a * b > best[0] * best[1] or (a * b == best[0] * best[1] and a > best[0]):
            best = (a, b)
    return best


def qwen_worst_size(factor: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) of the image a Qwen2-VL processor turns into the most tokens under ``max_pixels``."""
    cells = max(1, max_pixels // factor ** 2)
    a, b = most_cells(cells)
    # smart_resize keeps each side >= one cell: below 200 cells, an image nearly 200:1 ends one cell high
    # and longer than max_pixels allows, sqrt(cells * aspect) cells
    thin = math.isqrt(cells * QWEN_MAX_ASPECT - 1)
    if thin > a * b:
        a, b = 1, thin
    return a * factor, b * factor


def _qwen2_vl(v: TowerSpec, size: tuple[int, int] | None, inputs: InputSettings = InputSettings()) -> _ImageCount:
    factor = v.patch_size * v.merge_size
    low, high = inputs.min_pixels or QWEN_MIN_PIXELS, inputs.max_pixels or QWEN_MAX_PIXELS
    if low > high:
        raise InvalidSettingError(f"min_pixels ({low}) is larger than max_pixels ({high})")
    bounds = (f"min_pixels {low}" if inputs.min_pixels else "min_pixels 56*56") + ", " + \
             (f"max_pixels {high}" if inputs.max_pixels else "max_pixels 28*28*1280")
    notes: list[str] = []
    if size is None:
        resized = qwen_worst_size(factor, high)
        notes.append(f"no image_size given: planned at the image with the most tokens under the processor's "
                     f"max_pixels ({high}): {resized[1]}x{resized[0]}, the worst case")
    else:
        resized = smart_resize(size[0], size[1], factor, low, high)
        notes.extend(_resize_note(size, resized, f"Qwen2-VL ({bounds})"))
    patches = (resized[0] // v.patch_size) * (resized[1] // v.patch_size)
    temporal = int(v.extra.get("temporal_patch_size", 1) or 1)   # the frame is repeated per temporal patch
    return _ImageCount(patches // v.merge_size ** 2, patches, resized, tuple(notes),
                       pixels=resized[0] * resized[1] * temporal)


def _idefics3(v: TowerSpec, size: tuple[int, int] | None) -> _ImageCount:
    side = v.image_size
    per_tile_patches = (side // max(v.patch_size, 1)) ** 2
    scale = int(v.extra.get("scale_factor", 1) or 1)
    if size is None:
        tiles, resized = 16, (4 * side, 4 * side)
        note: tuple[str, ...] = ("no image_size given: planned at 4x4 tiles + 1 global tile, the worst case",)
    else:
        long_edge = 4 * side
        ratio = long_edge / max(size)
        resized = tuple(min(long_edge, math.ceil(d * ratio / side) * side) for d in size)
        tiles = (resized[0] // side) * (resized[1] // side)
        note = _resize_note(size, resized, "Idefics3 (longest edge 4 tiles)")
    tiles = tiles + 1 if tiles > 1 else 1     # a global tile is added when the image is split
    return _ImageCount(tiles * per_tile_patches // scale ** 2, tiles * per_tile_patches, resized, note,
                       pixels=tiles * side * side)


def _mllama(v: TowerSpec, size: tuple[int, int] | None) -> _ImageCount:
    side, tiles = v.image_size, int(v.extra.get("max_num_tiles", 4) or 4)
    patches = (side // max(v.patch_size, 1)) ** 2 + 1          # + the class token of every tile
    used = tiles if size is None else min(tiles, math.ceil(size[0] / side) * math.ceil(size[1] / side))
    notes = (f"Llama-3.2-Vision: the image fills {used} of {tiles} tiles; the processor pads it to {tiles} and the "
             f"vision tower and cross-attention run over all of them ({tiles * patches} vision tokens per image)",)
    return _ImageCount(1, tiles * (-(-patches // 8) * 8), None, notes, cross_tokens=tiles * patches,
                       pixels=tiles * side * side)


# TowerLayout.tokens -> how that family's processor turns an image into tokens
IMAGE_TOKEN_RULES: dict[str, Callable[[TowerSpec, "tuple[int, int] | None"], _ImageCount]] = {
    "llava": _llava, "gemma3": _gemma3, "qwen2_vl": _qwen2_vl, "idefics3": _idefics3, "mllama": _mllama,
}


def plan_inputs(arch: ArchSpec, inputs: InputSettings) -> InputPlan:
    """Check ``inputs`` against the model's towers and count tokens. Raises InvalidSettingError."""
    vision, audio = tower(arch.towers, "vision"), tower(arch.towers, "audio")
    if inputs.images_per_sample and vision is None:
        raise InvalidSettingError(
            f"images_per_sample={inputs.images_per_sample} but {arch.model_type!r} has no vision tower: "
            "images need a vision-language model (e.g. Qwen/Qwen2.5-VL-7B-Instruct); drop the image settings "
            "to plan text only")
    if inputs.audio_seconds is not None and audio is None:
        raise InvalidSettingError(f"audio_seconds given but {arch.model_type!r} has no audio encoder: audio needs a "
                                  "speech model such as Whisper; drop audio_seconds")
    if audio is not None:
        return _audio(audio, inputs.audio_seconds)
    if vision is None or not inputs.images_per_sample:
        notes = (f"{arch.model_type} is a vision-language model planned without images; pass images_per_sample "
                 "(--images) to add the vision tower and the image tokens",) if vision is not None else ()
        return InputPlan(notes=notes)
    layout = TOWER_LAYOUTS.get(arch.model_type)
    rule = IMAGE_TOKEN_RULES.get(layout.tokens if layout else "llava", _llava)
    pixel_bounds = inputs.min_pixels is not None or inputs.max_pixels is not None
    if pixel_bounds and rule is not _qwen2_vl:
        raise InvalidSettingError(
            f"min_pixels / max_pixels set the resize of Qwen2-VL-style processors; {arch.model_type!r} resizes "
            "images to its own fixed size or tiles: drop them (use image_size or image_tokens)")
    count = _qwen2_vl(vision, inputs.image_size, inputs) if rule is _qwen2_vl else rule(vision, inputs.image_size)
    lm_tokens, notes = count.lm_tokens, list(count.notes)
    if inputs.image_tokens is not None:
        if inputs.image_tokens != lm_tokens:
            notes.append(f"image_tokens={inputs.image_tokens} given: the language model sees that many tokens per "
                         f"image (the processor would give {lm_tokens})")
        lm_tokens = inputs.image_tokens
    notes.append(f"{inputs.images_per_sample} image(s) per sample add {inputs.images_per_sample * lm_tokens} tokens "
                 f"to the language model's sequence (seq_len counts the text tokens only); the vision tower runs "
                 f"over {count.vision_seq} patches per image")
    return InputPlan(inputs.images_per_sample, lm_tokens, count.vision_seq, count.size, count.cross_tokens,
                     count.pixels, notes=tuple(notes))


def _audio(audio: TowerSpec, seconds: float | None) -> InputPlan:
    frames = int(audio.extra.get("max_source_positions", 1500))
    stride = int(audio.extra.get("conv_stride", 2))
    if seconds is not None and seconds > WHISPER_WINDOW_SECONDS:
        raise InvalidSettingError(f"audio_seconds={seconds:g}: Whisper's encoder takes {WHISPER_WINDOW_SECONDS:g}-second "
                                  "windows; split longer audio into 30 s chunks (the pipeline's chunk_length_s=30)")
    notes = [f"audio: the feature extractor pads every clip to {WHISPER_WINDOW_SECONDS:g} s ({frames * stride} mel "
             f"frames); the encoder runs over {frames} frames; seq_len is the decoder's token count"]
    return InputPlan(audio_frames=frames, mel_frames=frames * stride, notes=tuple(notes))
