"""Callback test support: tiny random Llama models and a Trainer factory (offline, CPU).

A plain module, not a conftest, so it does not clash with tests/doctor/conftest.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(1)   # tiny models: threads only add overhead on a busy 2-core box


def tiny_llama(seed: int = 0, hidden: int = 32, layers: int = 2, vocab: int = 128):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                         max_position_embeddings=128)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def tiny_lora(seed: int = 0, targets=("q_proj", "v_proj"), r: int = 4, alpha: int = 8, **kwargs):
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(seed)
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                            task_type="CAUSAL_LM", **kwargs))


class TokenDataset:
    """Random token sequences; labels = inputs (causal LM)."""

    def __init__(self, n: int = 256, seq: int = 16, vocab: int = 128) -> None:
        self.n, self.seq, self.vocab = n, seq, vocab

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        import torch

        g = torch.Generator().manual_seed(i)
        x = torch.randint(0, self.vocab, (self.seq,), generator=g)
        return {"input_ids": x, "labels": x.clone()}


def make_trainer(model, callback, tmp_path, *, max_steps: int = 12, logging_steps: int = 1, lr: float = 1e-3,
                 extra_callbacks=(), **args):
    from transformers import Trainer, TrainingArguments

    arguments = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=4,
        learning_rate=lr, logging_steps=logging_steps, save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=True, seed=0, dataloader_num_workers=0, **args)
    return Trainer(model=model, args=arguments, train_dataset=TokenDataset(),
                   callbacks=[*extra_callbacks, callback])


@pytest.fixture
def trainer_factory(tmp_path):
    return lambda model, callback, **kw: make_trainer(model, callback, tmp_path, **kw)
