"""TRL's SFTTrainer on tiny LLaVA / Qwen2-VL with real processors (raw images + messages, TRL's vision
collator), the callback attached; and the worst image case read from the processor's settings."""

from callback_support import make_trainer  # noqa: F401  first: offline env

import io
import math

import pytest

pytest.importorskip("PIL", reason="pillow (test extra) backs transformers' PIL image processors")

from vlm_processors import PROCESSORS, image_dataset, llava_processor, qwen2_vl_processor  # noqa: E402

from lora_doctor import LoraDoctorCallback, plan_trainer  # noqa: E402
from lora_doctor.callback import DoctorConsole  # noqa: E402
from lora_doctor.measure.multimodal import LM_ONLY, mm_config  # noqa: E402
from lora_doctor.inputs import most_cells  # noqa: E402
from lora_doctor.workloads.images import dataset_images_per_sample, processor_worst  # noqa: E402

SIZES = [(200, 300), (150, 150)]   # (height, width): the first batch's image, then a smaller one


def _sft(tmp_path, model: str, callbacks=(), sizes=SIZES, **processor_kwargs):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=1, save_strategy="no",
                     report_to="none", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, logging_steps=1,
                     max_length=512)
    return SFTTrainer(model=AutoModelForImageTextToText.from_config(mm_config(model)), args=args,
                      train_dataset=image_dataset(sizes), processing_class=PROCESSORS[model](**processor_kwargs),
                      callbacks=list(callbacks), peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=LM_ONLY))


def _first_batch(trainer):
    return trainer.data_collator([trainer.train_dataset[0]])


def _train(tmp_path, model: str):
    out = io.StringIO()
    cb = LoraDoctorCallback(console=DoctorConsole(file=out), gpu="24GB")
    trainer = _sft(tmp_path, model, [cb])
    assert type(trainer.data_collator).__name__ == "DataCollatorForVisionLanguageModeling"
    expected = _first_batch(trainer)   # what the real collator hands the model (no shuffling with one row first)
    trainer.train()
    assert trainer.state.global_step == 2
    steps = [log for log in trainer.state.log_history if "loss" in log]
    assert len(steps) == 2 and all("doctor/grad_norm" in log and "doctor/loss" in log for log in steps)
    assert not [f for f in cb.findings if f.code in ("planner-failed", "callback-internal-error")]
    return cb, trainer, expected, out.getvalue()


@pytest.mark.slow
def test_llava_trl_sft_with_a_real_processor(tmp_path):
    cb, trainer, batch, panel = _train(tmp_path, "llava")
    s = cb.report.settings
    tokens = int((batch["input_ids"] == trainer.model.config.image_token_index).sum())
    assert tuple(batch["pixel_values"].shape[-2:]) == (224, 224) and tokens == 256
    assert (s["images_per_sample"], s["image_size"], s["image_tokens"]) == (1, (224, 224), tokens)
    plan = cb.report.plan
    assert plan.details["inputs"]["lm_tokens_per_image"] == 256
    assert plan.details["inputs"]["planned_image_size"] == [224, 224]
    assert plan.details["batch"]["images"]["source"] == "the worst case of LlavaImageProcessorPil crop_size=224x224"
    assert "images     1 per row at 224x224, 256 tokens each" in panel


@pytest.mark.slow
def test_qwen2_vl_trl_sft_reads_the_grid_and_plans_the_processors_worst_case(tmp_path):
    cb, trainer, batch, panel = _train(tmp_path, "qwen2_vl")
    s = cb.report.settings
    t, h, w = batch["image_grid_thw"][0].tolist()
    assert (s["images_per_sample"], s["image_size"]) == (1, (h * 14, w * 14))   # the first batch, as resized
    assert s["image_tokens"] == h * w // 4 == int((batch["input_ids"] == 4000).sum())
    # planned: the largest image max_pixels = 28*28*256 allows, 16 x 16 merged cells, not the first batch's
    plan = cb.report.plan
    assert plan.details["inputs"]["planned_image_size"] == [448, 448]
    assert plan.details["inputs"]["lm_tokens_per_image"] == 256 > s["image_tokens"]
    assert plan.details["batch"]["seq_len"] == 512 - 256
    assert f"the first batch's were {w * 14}x{h * 14}" in plan.notes[1]
    assert "max_pixels=200704" in panel and "256 tokens each" in panel


def test_plan_trainer_before_the_first_batch_reads_the_processor_and_dataset(tmp_path):
    """Nothing collated yet: images per row from the dataset's ``images`` column, size from the processor."""
    trainer = _sft(tmp_path, "qwen2_vl", sizes=[(64, 64), (300, 200)], max_pixels=28 * 28 * 240)
    plan = plan_trainer(trainer, gpu="24GB")
    images = plan.details["batch"]["images"]
    assert images["images_per_sample"] == 1 and images["image_size"] == (15 * 28, 16 * 28)
    assert plan.details["inputs"]["lm_tokens_per_image"] == 240
    assert "Qwen2VLImageProcessorPil max_pixels=188160" in plan.notes[1]


@pytest.mark.parametrize("cells", [64, 97, 211, 256, 1280])
def test_qwen_worst_case_bounds_every_image_the_processor_makes(cells):
    """Over squares, 4:3 ... 199.9:1 strips and the worst shape itself, the processor's largest grid is exactly
    the worst case (below 200 cells a thin strip: one cell high, more than max_pixels)."""
    ip = qwen2_vl_processor(max_pixels=28 * 28 * cells).image_processor
    h, w = processor_worst(ip).size
    worst = (h // 14) * (w // 14)
    shapes = [(a, int(a * r)) for a in range(20, 3000, 41) for r in (1, 4 / 3, 3, 10, 50, 150, 199, 199.9)]
    assert max(ip.get_number_of_image_patches(a, b, {}) for a, b in shapes + [(h, w)]) == worst
    assert worst == 4 * max(most_cells(cells)[0] * most_cells(cells)[1], math.isqrt(200 * cells - 1))


def test_llava_worst_case_is_the_crop():
    import numpy as np
    from PIL import Image

    proc = llava_processor(side=112)
    worst = processor_worst(proc)
    out = proc.image_processor(images=[Image.fromarray(np.zeros((300, 170, 3), dtype=np.uint8))], return_tensors="pt")
    assert worst.size == tuple(out["pixel_values"].shape[-2:]) == (112, 112)


def test_tiling_processors_give_no_worst_case():
    """Gemma-3 with pan-and-scan and Llama-3.2-Vision tile images: their ``size`` is one tile, not the worst."""
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    assert processor_worst(Gemma3ImageProcessorPil(size={"height": 896, "width": 896})).size == (896, 896)
    assert processor_worst(Gemma3ImageProcessorPil(do_pan_and_scan=True)) is None
    assert processor_worst(MllamaImageProcessorPil()) is None


def test_images_per_row_from_the_dataset():
    from datasets import Dataset

    data = image_dataset([(20, 20)] * 3)
    rows = [list(r) for r in data["images"]]
    more = Dataset.from_dict({"images": [rows[0], rows[0] + rows[1] + rows[2], []]})
    assert dataset_images_per_sample(data) == 1 and dataset_images_per_sample(more) == 3
    assert dataset_images_per_sample(Dataset.from_dict({"text": ["a"]})) == 0
    assert dataset_images_per_sample(Dataset.from_dict({"images": ["a.png"]})) == 0   # not a list: unknown


def test_most_cells():
    assert most_cells(64) == (8, 8) and most_cells(80) == (8, 10) and most_cells(1280) == (32, 40)
    assert most_cells(97) == (1, 97) and most_cells(211) == (14, 15)
    assert most_cells(5) == (1, 5) and most_cells(5, max_aspect=2) == (2, 2)   # 1 x 5 is past a 2:1 limit


@pytest.mark.slow
def test_qwen2_vl_under_plain_trainer_with_the_processor(tmp_path):
    """transformers.Trainer (no TRL) holding the processor as ``processing_class``, a collator calling it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, Trainer, TrainingArguments

    processor = qwen2_vl_processor(max_pixels=28 * 28 * 400)
    data = image_dataset(SIZES)

    def collate(rows):
        texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                 "text": r["messages"][0]["content"]}]}], tokenize=False) for r in rows]
        batch = processor(images=[r["images"] for r in rows], text=texts, return_tensors="pt", padding=True)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return batch

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForImageTextToText.from_config(mm_config("qwen2_vl")),
                           LoraConfig(r=4, lora_alpha=8, target_modules=LM_ONLY))
    cb = LoraDoctorCallback(console=DoctorConsole(file=io.StringIO()), gpu="24GB")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=1,
                             save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, logging_steps=1,
                             remove_unused_columns=False, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate, processing_class=processor,
                      callbacks=[cb])
    trainer.train()
    assert trainer.state.global_step == 2
    first = collate([data[0]])
    s, plan = cb.report.settings, cb.report.plan
    assert s["image_tokens"] == int(first["image_grid_thw"][0].prod()) // 4
    assert plan.details["inputs"]["planned_image_size"] == [560, 560]   # 20 x 20 cells of 28: max_pixels 28*28*400
    assert plan.details["inputs"]["lm_tokens_per_image"] == 400
    assert plan.details["batch"]["seq_len"] == s["seq_len"]   # no max_length: the first batch's text
