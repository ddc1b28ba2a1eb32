"""Multimodal validation cases: tiny LLaVA, Qwen2-VL, Qwen2.5-VL and Whisper built from configs, with random
pixel values / audio features shaped as their processors return them (``benchmarks/multimodal_accuracy.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..plan_types import InputSettings, PlanSettings

IMAGE_TOKEN = 4000

MM_CONFIGS: dict[str, dict[str, Any]] = {
    "llava": dict(
        model_type="llava", image_token_index=IMAGE_TOKEN, image_seq_length=256, projector_hidden_act="gelu",
        text_config=dict(model_type="llama", hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=4096, max_position_embeddings=2048),
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, image_size=224, patch_size=14, projection_dim=64),
    ),
    "qwen2_vl": dict(
        model_type="qwen2_vl", image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN + 1,
        vision_start_token_id=IMAGE_TOKEN + 2, vision_end_token_id=IMAGE_TOKEN + 3,
        text_config=dict(model_type="qwen2_vl_text", hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=4096, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0}),
        vision_config=dict(model_type="qwen2_vl", embed_dim=64, depth=2, num_heads=4, mlp_ratio=4, hidden_size=128,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
    ),
    "qwen2_5_vl": dict(
        model_type="qwen2_5_vl", image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN + 1,
        vision_start_token_id=IMAGE_TOKEN + 2, vision_end_token_id=IMAGE_TOKEN + 3,
        text_config=dict(model_type="qwen2_5_vl_text", hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=4096, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0}),
        # window attention (112 px windows) in block 0, full attention in block 1, as the real towers alternate
        vision_config=dict(model_type="qwen2_5_vl", hidden_size=64, depth=2, num_heads=4, intermediate_size=128,
                           out_hidden_size=128, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, fullatt_block_indexes=[1]),
    ),
    "gemma3": dict(
        model_type="gemma3", image_token_id=IMAGE_TOKEN, boi_token_index=IMAGE_TOKEN + 1,
        eoi_token_index=IMAGE_TOKEN + 2, mm_tokens_per_image=64,
        text_config=dict(model_type="gemma3_text", hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=4096,
                         sliding_window=64, max_position_embeddings=4096),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=256,
                           num_hidden_layers=2, num_attention_heads=4, image_size=224, patch_size=14),
    ),
    "idefics3": dict(
        model_type="idefics3", image_token_id=IMAGE_TOKEN, scale_factor=2,
        text_config=dict(model_type="llama", hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=4096, max_position_embeddings=4096),
        vision_config=dict(model_type="idefics3_vision", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, image_size=112, patch_size=14),
    ),
    "mllama": dict(
        model_type="mllama", image_token_index=4096,   # one past the text vocabulary, as in the released models
        text_config=dict(model_type="mllama_text_model", hidden_size=128, intermediate_size=352,
                         num_hidden_layers=3, cross_attention_layers=[1], num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=4096, max_position_embeddings=4096, pad_token_id=0),
        vision_config=dict(model_type="mllama_vision_model", hidden_size=64, intermediate_size=256,
                           num_hidden_layers=2, num_global_layers=1, attention_heads=4, image_size=112,
                           patch_size=14, max_num_tiles=4, intermediate_layers_indices=[0],
                           vision_output_dim=128),
    ),
    "whisper": dict(model_type="whisper", d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                    decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, vocab_size=4096,
                    num_mel_bins=80, max_source_positions=1500, max_target_positions=448,
                    decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                    begin_suppress_tokens=None, suppress_tokens=None),
}
AUTO_CLASSES = {"llava": "AutoModelForImageTextToText", "qwen2_vl": "AutoModelForImageTextToText",
                "qwen2_5_vl": "AutoModelForImageTextToText", "gemma3": "AutoModelForImageTextToText",
                "idefics3": "AutoModelForImageTextToText", "mllama": "AutoModelForImageTextToText", "whisper": "AutoModelForSpeechSeq2Seq"}
QWEN = ("qwen2_vl", "qwen2_5_vl")


@dataclass(frozen=True)
class MMCase:
    name: str
    model: str
    settings: PlanSettings = field(default_factory=PlanSettings)


def _s(images: int = 0, size: tuple[int, int] | None = None, **kw: Any) -> PlanSettings:
    return PlanSettings(inputs=InputSettings(images, size), **kw)


LM_ONLY = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
TEXT_ONLY = r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"   # Idefics3's LM
QV = ["q_proj", "v_proj"]
MM_CASES: tuple[MMCase, ...] = (
    MMCase("llava lora lm-only bf16 1 img", "llava", _s(1, target_modules=LM_ONLY, seq_len=128, batch_size=2)),
    MMCase("llava lora all-linear bf16 1 img", "llava", _s(1, target_modules="all-linear", seq_len=128, batch_size=2)),
    MMCase("llava lora q,v (hits CLIP) fp32 2 img", "llava", _s(2, target_modules=QV, dtype="fp32", seq_len=128, batch_size=1)),
    MMCase("llava lora all-linear bf16 +gc", "llava", _s(1, target_modules="all-linear", seq_len=128, batch_size=2, gradient_checkpointing=True)),
    MMCase("llava full fp32 1 img", "llava", _s(1, mode="full", dtype="fp32", seq_len=128, batch_size=2)),
    MMCase("qwen2-vl lora lm-only bf16 448x448", "qwen2_vl", _s(1, (448, 448), target_modules=LM_ONLY, seq_len=128, batch_size=2)),
    MMCase("qwen2-vl lora all-linear bf16 448x336", "qwen2_vl", _s(1, (336, 448), target_modules="all-linear", seq_len=128, batch_size=2)),
    MMCase("qwen2-vl lora all-linear bf16 +gc", "qwen2_vl", _s(1, (448, 448), target_modules="all-linear", seq_len=128, batch_size=2, gradient_checkpointing=True)),
    MMCase("qwen2-vl full fp32 448x448", "qwen2_vl", _s(1, (448, 448), mode="full", dtype="fp32", seq_len=128, batch_size=1)),
    MMCase("qwen2.5-vl lora all-linear bf16 2x 336x448", "qwen2_5_vl", _s(2, (336, 448), target_modules="all-linear", seq_len=128, batch_size=1)),
    MMCase("gemma3 lora all-linear bf16 1 img", "gemma3", _s(1, target_modules="all-linear", seq_len=128, batch_size=2)),
    MMCase("gemma3 full fp32 2 img", "gemma3", _s(2, mode="full", dtype="fp32", seq_len=128, batch_size=1)),
    MMCase("idefics3 lora all-linear bf16 224x224", "idefics3", _s(1, (224, 224), target_modules="all-linear", seq_len=128, batch_size=1)),
    MMCase("idefics3 lora lm-only bf16 224x224", "idefics3", _s(1, (224, 224), target_modules=TEXT_ONLY, seq_len=128, batch_size=2)),
    MMCase("mllama lora all-linear bf16 224x224", "mllama", _s(1, (224, 224), target_modules="all-linear", seq_len=128, batch_size=2)),
    MMCase("mllama full fp32 224x224", "mllama", _s(1, (224, 224), mode="full", dtype="fp32", seq_len=128, batch_size=1)),
    MMCase("whisper lora q,v bf16", "whisper", _s(target_modules=QV, seq_len=128, batch_size=2)),
    MMCase("whisper lora all-linear fp32", "whisper", _s(target_modules="all-linear", dtype="fp32", seq_len=128, batch_size=2)),
    MMCase("whisper full fp32", "whisper", _s(mode="full", dtype="fp32", seq_len=128, batch_size=2)),
)


def mm_config(name: str) -> Any:
    from ..models import config_from_dict

    return config_from_dict(MM_CONFIGS[name])


class MultimodalSamples(torch.utils.data.Dataset):
    """Random samples shaped as the model's processor and collator produce them."""

    def __init__(self, model: str, settings: PlanSettings, n: int) -> None:
        from ..inputs import plan_inputs
        from ..models import resolve

        self.model, self.n = model, n
        self.ip = plan_inputs(resolve(MM_CONFIGS[model]).arch, settings.inputs)
        self.seq = settings.seq_len
        from ..torch_dtypes import torch_dtype

        self.dtype = torch_dtype(settings.dtype)   # Whisper's conv front-end wants features in the model dtype
        self.g = torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.model == "whisper":
            ids = torch.randint(3, 4000, (self.seq,), generator=self.g)
            features = torch.randn(80, self.ip.mel_frames, generator=self.g).to(self.dtype)
            return {"input_features": features,
                    "decoder_input_ids": ids, "labels": ids}
        images = self.ip.images
        image_token = int(MM_CONFIGS[self.model].get("image_token_index", IMAGE_TOKEN))
        text = torch.randint(5, 3999, (self.seq - (images - 1 if self.model in QWEN else 0),), generator=self.g)
        image_ids = torch.full((self.ip.lm_image_tokens,), image_token)
        if self.model in QWEN and images > 1:   # Qwen's processor closes each image: <|vision_end|><|vision_start|>
            one = torch.full((self.ip.lm_tokens_per_image,), IMAGE_TOKEN)
            image_ids = torch.cat([t for _ in range(images) for t in (one, torch.tensor([IMAGE_TOKEN + 3]))][:-1])
        ids = torch.cat([image_ids, text])
        labels = ids.masked_fill(ids == image_token, -100)
        sample = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
        sample.update(PIXELS.get(self.model, _pixels_llava)(self, ids))
        return sample


def _pixels_llava(data: MultimodalSamples, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    h, w = data.ip.planned_size
    sample = {"pixel_values": torch.randn(data.ip.images, 3, h, w, generator=data.g)}
    if data.model == "gemma3":   # the processor marks image tokens: they attend to each other both ways
        sample["token_type_ids"] = (ids == IMAGE_TOKEN).long()
    return sample


def _pixels_qwen(data: MultimodalSamples, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    h, w = data.ip.planned_size
    grid = torch.tensor([1, h // 14, w // 14])
    patches = data.ip.images * int(grid.prod())
    return {"pixel_values": torch.randn(patches, 3 * 2 * 14 * 14, generator=data.g),
            "image_grid_thw": grid.repeat(data.ip.images, 1),
            "mm_token_type_ids": (ids == IMAGE_TOKEN).long()}   # M-RoPE needs it (the processor returns it)


def _pixels_idefics3(data: MultimodalSamples, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every tile (and the global view) is one image to the model; a leading 1 so collate stacks per sample."""
    side = MM_CONFIGS["idefics3"]["vision_config"]["image_size"]
    tiles = data.ip.images * data.ip.vision_seq_per_image // (side // 14) ** 2
    return {"pixel_values": torch.randn(1, tiles, 3, side, side, generator=data.g),
            "pixel_attention_mask": torch.ones(tiles, side, side, dtype=torch.bool)}


def _pixels_mllama(data: MultimodalSamples, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every image padded to max_num_tiles tiles; every text token attends to every image (one image token first)."""
    vision = MM_CONFIGS["mllama"]["vision_config"]
    side, tiles, images = vision["image_size"], vision["max_num_tiles"], data.ip.images
    return {"pixel_values": torch.randn(1, images, tiles, 3, side, side, generator=data.g),
            "aspect_ratio_ids": torch.full((images,), 6, dtype=torch.long),   # 2x2 tiles
            "aspect_ratio_mask": torch.ones(images, tiles, dtype=torch.long),
            "cross_attention_mask": torch.ones(len(ids), images, tiles, dtype=torch.long)}


# model -> the processor's image tensors for one sample
PIXELS = {"qwen2_vl": _pixels_qwen, "qwen2_5_vl": _pixels_qwen, "idefics3": _pixels_idefics3,
          "mllama": _pixels_mllama}


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack text and LLaVA pixel values; Qwen2-VL's patches and grids are concatenated, as its collator does."""
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.cat(values) if key in ("pixel_values", "image_grid_thw") else torch.stack(values)
    return out


def measure_case(case: MMCase, steps: int = 3) -> Any:
    """Three steps: in every step but the last, accelerate's dataloader holds the next batch (its pixel
    values too), as in a real run; the second step also has the optimizer states."""
    from .training import measure_training

    data = MultimodalSamples(case.model, case.settings, case.settings.batch_size * steps)
    return measure_training(mm_config(case.model), case.settings, steps=steps, dataset=data,
                            auto_class=AUTO_CLASSES[case.model], task_type=None, collator=collate)
