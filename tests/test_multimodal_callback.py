"""The callback on a tiny LLaVA and Qwen2-VL under a real Trainer (and TRL SFT): the pre-flight plans the first batch's images."""

from callback_support import make_trainer  # noqa: F401  first: offline env

import io

import pytest

from lora_doctor import LoraDoctorCallback
from lora_doctor.callback import DoctorConsole
from lora_doctor.measure.multimodal import LM_ONLY, MultimodalSamples, collate, mm_config
from lora_doctor.plan_types import InputSettings, PlanSettings

pytestmark = pytest.mark.slow


def _run(tmp_path, model_name: str, size):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForImageTextToText.from_config(mm_config(model_name)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=LM_ONLY))
    settings = PlanSettings(seq_len=16, batch_size=1, inputs=InputSettings(1, size))
    cb = LoraDoctorCallback(console=DoctorConsole(file=io.StringIO()), gpu="24GB")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=1,
                             save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                             remove_unused_columns=False, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=MultimodalSamples(model_name, settings, 2),
                      data_collator=collate, callbacks=[cb])
    trainer.train()
    return cb


def test_llava_preflight_reads_pixel_values(tmp_path):
    cb = _run(tmp_path, "llava", None)
    s = cb.report.settings
    assert (s["images_per_sample"], s["image_size"], s["image_tokens"], s["seq_len"]) == (1, (224, 224), 256, 16)
    plan = cb.report.plan
    assert plan is not None and plan.details["inputs"]["lm_seq_len"] == 16 + 256
    assert any("256 tokens" in n for n in plan.notes)
    assert not [f for f in cb.findings if f.code == "planner-failed"]


def test_qwen2_vl_preflight_reads_the_image_grid(tmp_path):
    cb = _run(tmp_path, "qwen2_vl", (224, 336))
    s = cb.report.settings
    assert (s["images_per_sample"], s["image_size"], s["image_tokens"]) == (1, (224, 336), 16 * 24 // 4)
    assert cb.report.plan is not None and cb.report.plan.details["inputs"]["lm_tokens_per_image"] == 96


def _word_tokenizer():
    """A 100-word tokenizer built offline (SFTTrainer wants a processing_class; the batches come pre-tokenized)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(100)} | {"<unk>": 100, "<eos>": 101, "<pad>": 102}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>")


def test_llava_under_trl_sft(tmp_path):
    """TRL's SFTTrainer with a VLM collator (pixel_values in the batch, dataset prepared by the user)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    samples = MultimodalSamples("llava", PlanSettings(seq_len=16, batch_size=1, inputs=InputSettings(1, None)), 2)
    data = Dataset.from_list([{k: v.tolist() for k, v in samples[i].items()} for i in range(2)])
    cb = LoraDoctorCallback(console=DoctorConsole(file=io.StringIO()), gpu="24GB")
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=1,
                     save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
                     dataloader_num_workers=0)
    trainer = SFTTrainer(model=AutoModelForImageTextToText.from_config(mm_config("llava")), args=args,
                         train_dataset=data, processing_class=_word_tokenizer(), callbacks=[cb],
                         data_collator=lambda rows: collate([{k: torch.tensor(v) for k, v in r.items()} for r in rows]),
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=LM_ONLY))
    trainer.train()
    s = cb.report.settings
    assert (s["images_per_sample"], s["image_tokens"], s["seq_len"]) == (1, 256, 16)
    assert cb.report.plan is not None and cb.report.plan.details["inputs"]["lm_seq_len"] == 272
