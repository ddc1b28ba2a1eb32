"""QLoRA fine-tuning of Llama-2-7B on one GPU with LoraDoctorCallback: the recipe to copy.

    pip install lora-doctor datasets
    python examples/qlora_llama2_7b.py --model meta-llama/Llama-2-7b-hf --data timdettmers/openassistant-guanaco

Needs a CUDA GPU with about 12 GB or more (NF4 weights ~3.6 GiB; the rest is activations and logits at
``--seq-len``; the pre-flight panel prints the planned breakdown against your GPU before step 1).
Not run in CI. The callback is the only lora-doctor line; everything else is a standard
transformers + peft + bitsandbytes QLoRA setup (Dettmers et al. 2023): NF4 with double quantization,
bf16 compute, ``prepare_model_for_kbit_training``, adapters on every linear of the decoder.
Metrics go to TensorBoard under ``doctor/`` (``--report-to wandb`` or ``mlflow`` works the same way).
"""

from __future__ import annotations

import argparse

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, DataCollatorForLanguageModeling,
                          Trainer, TrainingArguments)

from lora_doctor import LoraDoctorCallback


def load_dataset_tokenized(name: str, tokenizer, seq_len: int):
    from datasets import load_dataset   # pip install datasets

    data = load_dataset(name, split="train")
    column = "text" if "text" in data.column_names else data.column_names[0]

    def tokenize(batch):
        return tokenizer(batch[column], truncation=True, max_length=seq_len)

    return data.map(tokenize, batched=True, remove_columns=data.column_names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="meta-llama/Llama-2-7b-hf")
    parser.add_argument("--data", default="timdettmers/openassistant-guanaco")
    parser.add_argument("--output-dir", default="llama2-7b-qlora")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--report-to", default="tensorboard")
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this recipe needs a CUDA GPU; see examples/quickstart_cpu.py for a CPU demo")

    bf16 = torch.cuda.is_bf16_supported()
    compute_dtype = torch.bfloat16 if bf16 else torch.float16
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute_dtype)
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.unk_token   # not eos: keeps eos labels (see docs/checks.md)
    model = AutoModelForCausalLM.from_pretrained(opts.model, quantization_config=quantization, dtype=compute_dtype,
                                                 device_map={"": 0}, attn_implementation="sdpa")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))

    args = TrainingArguments(
        output_dir=opts.output_dir, max_steps=opts.max_steps, per_device_train_batch_size=opts.batch,
        gradient_accumulation_steps=opts.grad_accum, learning_rate=2e-4, lr_scheduler_type="cosine",
        warmup_steps=20, max_grad_norm=0.3, optim="paged_adamw_8bit", bf16=bf16, fp16=not bf16,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=10, save_steps=100, report_to=opts.report_to)
    trainer = Trainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=load_dataset_tokenized(opts.data, tokenizer, opts.seq_len),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        # one line: pre-flight panel, live health checks, doctor/* metrics; stop (with a checkpoint) on a spike
        callbacks=[LoraDoctorCallback(on_explosion="stop")],
    )
    trainer.train()
    trainer.save_model(opts.output_dir)


if __name__ == "__main__":
    main()
