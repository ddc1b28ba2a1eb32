"""The traced batch: token ids, plus the images or audio of ``settings.inputs`` for multimodal models.

Built as a real collator returns it, with the shapes :func:`lora_doctor.inputs.plan_inputs` plans:

* text models: ``input_ids`` and ``labels`` of ``[batch, seq_len]``;
* LLaVA-style models: every sample starts with its image tokens (``images x tokens per image`` copies
  of the config's image token id), then ``seq_len`` text tokens; labels ignore the image tokens; no
  attention mask (all ones: a real run takes SDPA's causal path, as with none);
  ``pixel_values`` are fp32 ``[batch x images, 3, height, width]`` at the processor's planned size;
* Qwen2-VL / Qwen2.5-VL: as their processor lays a sample out, each image's tokens in one run (one
  text token between two images, where the processor puts ``<|vision_end|><|vision_start|>``), then
  the text; ``pixel_values`` are the flattened patches, fp32 ``[batch x images x t*h*w, channels x
  temporal_patch x patch^2]``; ``image_grid_thw`` ``[batch x images, 3]`` and ``mm_token_type_ids``
  (1 on image tokens) as the processor returns them. The integer tensors (ids, labels, token types,
  grids) are real, not fake: the model reads their values (see :mod:`lora_doctor.trace.metadata`);
* Gemma-3: LLaVA's layout plus real ``token_type_ids``; Idefics3: every tile an image, with real
  pixel values and pixel mask; Llama-3.2-Vision: one image token per image, tiles padded to
  ``max_num_tiles``, and the processor's aspect-ratio and cross-attention masks (the builders below);
* Whisper: ``input_features`` of ``[batch, mel bins, 3000]`` in the model dtype (what the collator
  casts them to), ``decoder_input_ids`` and ``labels`` of ``[batch, seq_len]``.

Which families the trace can feed is the table below; the others fall back to the analytic engine.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import UnsupportedModelError
from ..inputs import InputPlan, plan_inputs
from ..models import ResolvedModel
from ..plan_types import PlanSettings
from ..torch_dtypes import torch_dtype as dtype_of
from ..towers import tower
from .metadata import real

Batch = dict[str, torch.Tensor]
PIXEL_DTYPE = torch.float32      # image processors return fp32 arrays


def _text(resolved: ResolvedModel, s: PlanSettings, ip: InputPlan) -> Batch:
    ids = torch.zeros(s.batch_size, s.seq_len, dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone()}


def _image_token_id(resolved: ResolvedModel) -> int:
    config = resolved.config()
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise UnsupportedModelError(f"{config.model_type}: no image_token_id in the config")


def _image_first(resolved: ResolvedModel, s: PlanSettings, ip: InputPlan) -> Batch:
    """Every sample's image tokens, then ``seq_len`` text tokens; labels ignore the image tokens."""
    image = torch.full((s.batch_size, ip.lm_image_tokens), _image_token_id(resolved), dtype=torch.long)
    ids = torch.cat([image, torch.zeros(s.batch_size, s.seq_len, dtype=torch.long)], dim=1)
    labels = torch.cat([torch.full_like(image, -100), ids[:, ip.lm_image_tokens:]], dim=1)
    return {"input_ids": ids, "labels": labels}


def _images(s: PlanSettings, ip: InputPlan) -> torch.Tensor:
    h, w = ip.planned_size or (0, 0)
    return torch.empty(s.batch_size * ip.images, 3, h, w, dtype=PIXEL_DTYPE)


def _llava(resolved: ResolvedModel, s: PlanSettings, ip: InputPlan) -> Batch:
    if not ip.images:
        return _text(resolved, s, ip)
    # no attention_mask: the collator's is all ones, which a real run reads as "no mask" (SDPA's is_causal);
    # a fake all-ones mask can't be read, and the model would build an explicit [b, 1, s, s] mask instead
    return dict(_image_first(resolved, s, ip), pixel_values=_images(s, ip))


def _qwen2_vl(resolved: ResolvedModel, s: PlanSettings, ip: InputPlan) -> Batch:
    if not ip.images:
        return _text(resolved, s, ip)
    config = resolved.config()
    vision, image_token = config.vision_config, _image_token_id(resolved)
    patch, temporal = int(vision.patch_size), int(vision.temporal_patch_size)
    h, w = ip.planned_size or (0, 0)
    grid = (1, h // patch, w // patch)        # one image: one temporal patch (the frame is repeated)
    text = max(s.seq_len - (ip.images - 1), 1)   # one text token separates two images

    def metadata() -> Batch:
        image = torch.full((ip.lm_tokens_per_image,), image_token, dtype=torch.long)
        parts = [t for _ in range(ip.images) for t in (image, torch.zeros(1, dtype=torch.long))][:-1]
        row = torch.cat(parts + [torch.zeros(text, dtype=torch.long)])
        ids = row.repeat(s.batch_size, 1)
        is_image = ids == image_token
        return {"input_ids": ids, "labels": ids.masked_fill(is_image, -100),
                "image_grid_thw": torch.tensor([grid] * (s.batch_size * ip.images), dtype=torch.long),
                "mm_token_type_ids": is_image.long()}

    batch = real(metadata)
    patches = s.batch_size * ip.images * grid[0] * grid[1] * grid[2]
    channels = int(getattr(vision, "in_channels", 3) or 3)
    batch["pixel_values"] = torch.empty(patches, channels * temporal * patch * patch, dtype=PIXEL_DTYPE)
    return batch


def _gemma3(resolved: ResolvedModel, s: PlanSettings, ip: InputPlan) -> Batch:
    """LLaVA's layout plus ``token_type_ids`` (1 on image tokens), real: Gemma-3 reads them to let each
    image's tokens attend to each other both ways (the processor returns them for training)."""
    if not ip.images:
        return _text(resolved, s, ip)
    batch = real(lambda: _image_first(resolved, s, ip))
    batch["token_type_ids"] = real(lambda: (batch["input_ids"] == _image_token_id(resolved)).long())
    return dict(batch, pixel_values=_images(s, ip))     # fake: the images are big, and never read


def _idefics3(resolved: ResolvedModel, s: PlanSettings, ip: InputPlan) -> Batch:
    """Every tile is an image to the model: ``pixel_values`` ``[batch, images x tiles, 3, side, side]`` and
    the processor's ``pixel_attention_mask``. Both are real (ones): Idefics3 drops all-zero padding images
    by reading the pixel values and skips the vision mask by reading it (their real-run memory is kept)."""
    if not ip.images:
        return _text(resolved, s, ip)
    side = int(resolved.config().vision_config.image_size)
    tiles = ip.vision_seq_per_image // max((side // int(resolved.config().vision_config.patch_size)) ** 2, 1)

    def metadata() -> Batch:
        return dict(_image_first(resolved, s, ip),
                    pixel_values=torch.ones(s.batch_size, ip.images * tiles, 3, side, side, dtype=PIXEL_DTYPE),
                    pixel_attention_mask=torch.ones(s.batch_size, ip.images * tiles, side, side, dtype=torch.bool))

    return real(metadata)


def _mllama(resolved: ResolvedModel, s: PlanSettings, ip: InputPlan) -> Batch:
    """One ``<|image|>`` token per image, then the text; the processor pads every image to ``max_num_tiles``
    tiles: ``pixel_values`` ``[batch, images, tiles, 3, side, side]``, ``aspect_ratio_ids`` / ``_mask`` and the
    ``cross_attention_mask`` ``[batch, seq, images, tiles]`` (all fake: Mllama reads none of their values)."""
    if not ip.images:
        return _text(resolved, s, ip)
    vision = resolved.config().vision_config
    side, tiles = int(vision.image_size), int(vision.max_num_tiles)
    batch = _image_first(resolved, s, ip)
    seq = batch["input_ids"].shape[1]
    return dict(batch, pixel_values=torch.empty(s.batch_size, ip.images, tiles, 3, side, side, dtype=PIXEL_DTYPE),
                aspect_ratio_ids=torch.ones(s.batch_size, ip.images, dtype=torch.long),
                aspect_ratio_mask=torch.ones(s.batch_size, ip.images, tiles, dtype=torch.long),
                cross_attention_mask=torch.ones(s.batch_size, seq, ip.images, tiles, dtype=torch.long))


def _whisper(resolved: ResolvedModel, s: PlanSettings, ip: InputPlan) -> Batch:
    audio = tower(resolved.arch.towers, "audio")
    bins = int(audio.extra.get("num_mel_bins", 80)) if audio is not None else 80
    ids = torch.zeros(s.batch_size, s.seq_len, dtype=torch.long)
    features = torch.empty(s.batch_size, bins, ip.mel_frames, dtype=dtype_of(s.dtype))
    return {"input_features": features, "decoder_input_ids": ids, "labels": ids.clone()}


# model_type -> batch builder, for the multimodal families the trace runs
BATCHES: dict[str, Callable[[ResolvedModel, PlanSettings, InputPlan], Batch]] = {
    "llava": _llava,
    "qwen2_vl": _qwen2_vl,
    "qwen2_5_vl": _qwen2_vl,
    "gemma3": _gemma3,
    "idefics3": _idefics3,
    "mllama": _mllama,
    "whisper": _whisper,
}


def traceable(resolved: ResolvedModel) -> bool:
    """Whether the trace can build this model's batch (every text model; the multimodal families above)."""
    return not resolved.arch.towers or resolved.arch.model_type in BATCHES


def trace_batch(resolved: ResolvedModel, settings: PlanSettings) -> Batch:
    """The batch of one step (call inside the FakeTensorMode: the tensors are made fake)."""
    if not resolved.arch.towers:
        return _text(resolved, settings, InputPlan())
    ip = plan_inputs(resolved.arch, settings.inputs)
    return BATCHES[resolved.arch.model_type](resolved, settings, ip)


def look_ahead(batch: Batch) -> list[torch.Tensor]:
    """The next batch accelerate's ``DataLoaderShard`` already holds on a CPU run (same shapes)."""
    return [torch.empty_like(t) for t in batch.values()]
