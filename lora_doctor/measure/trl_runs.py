"""Run real TRL trainers (SFT, DPO, GRPO) on CPU with tiny models and measure the live-tensor peak.

Everything is local: a Llama built ``from_config`` (random weights), a word-level tokenizer built
with ``tokenizers`` and wrapped in ``PreTrainedTokenizerFast``, datasets of random words. Used by
``benchmarks/accuracy.py`` (TRL cases) and the TRL tests.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from typing import Any

from .tracker import StorageTracker

TINY_LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096)


@dataclass(frozen=True)
class TrlCase:
    name: str
    trainer: str                       # "sft" | "dpo" | "grpo"
    vocab: int = 4096
    batch_size: int = 2
    lengths: tuple[int, int] = (64, 128)   # example lengths in words (tokens), min and max
    peft: bool = True
    config: dict = field(default_factory=dict)   # extra SFTConfig / DPOConfig / GRPOConfig fields
    model: dict = field(default_factory=dict)    # extra LlamaConfig fields


def word_tokenizer(vocab: int) -> Any:
    """A word-level tokenizer over ``w0 .. w{vocab-3}`` plus ``<s>`` and ``</s>`` (no pad token, like Llama)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<s>": 0, "</s>": 1, **{f"w{i}": i + 2 for i in range(vocab - 2)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="</s>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}{{ m['content'] }} {% endfor %}"
                          "{% if add_generation_prompt %}{% endif %}")
    return fast


def _words(rng: random.Random, vocab: int, n: int) -> str:
    return " ".join(f"w{rng.randrange(vocab - 2)}" for _ in range(n))


def make_dataset(case: TrlCase, rows: int) -> Any:
    from datasets import Dataset

    rng = random.Random(0)
    lo, hi = case.lengths
    lengths = [hi] + [rng.randint(lo, hi) for _ in range(rows - 1)]
    if case.trainer == "sft":
        return Dataset.from_dict({"text": [_words(rng, case.vocab, n) for n in lengths]})
    if case.trainer == "dpo":
        half = [n // 2 for n in lengths]
        return Dataset.from_dict({"prompt": [_words(rng, case.vocab, h) for h in half],
                                  "chosen": [_words(rng, case.vocab, n - h) for n, h in zip(lengths, half)],
                                  "rejected": [_words(rng, case.vocab, n - h) for n, h in zip(lengths, half)]})
    return Dataset.from_dict({"prompt": [_words(rng, case.vocab, n) for n in lengths]})


def completion_length_reward(completions: list, **_: Any) -> list[float]:
    """A trivial GRPO reward: the completion's length in characters."""
    return [float(len(str(c))) for c in completions]


def build_trainer(case: TrlCase, workdir: str, *, steps: int = 2, callbacks: list | None = None) -> Any:
    import torch
    import trl
    from peft import LoraConfig
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, "vocab_size": case.vocab, **case.model}))
    tokenizer = word_tokenizer(case.vocab)
    common = dict(output_dir=workdir, per_device_train_batch_size=case.batch_size, max_steps=steps,
                  learning_rate=1e-4, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                  disable_tqdm=True, dataloader_num_workers=0, seed=0, bf16=False)
    peft_config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM") if case.peft else None
    rows = case.batch_size * steps * 4
    data = make_dataset(case, rows)
    if case.trainer == "sft":
        args = trl.SFTConfig(**common, **case.config)
        return trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                              peft_config=peft_config, callbacks=callbacks)
    if case.trainer == "dpo":
        args = trl.DPOConfig(**common, **case.config)
        return trl.DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                              peft_config=peft_config, callbacks=callbacks)
    args = trl.GRPOConfig(**common, **case.config)
    return trl.GRPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                           reward_funcs=completion_length_reward, peft_config=peft_config, callbacks=callbacks)


@dataclass
class TrlMeasured:
    peak_bytes: int
    peak_phase: str
    phase_peaks: dict[str, int]


def measure_trainer(trainer: Any) -> TrlMeasured:
    """Train ``trainer`` under a StorageTracker; phases: generation, forward, backward, optimizer_step."""
    from transformers import TrainerCallback

    tracker = StorageTracker()

    class _Phases(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            tracker.phase = "step"

        def on_pre_optimizer_step(self, *a: Any, **k: Any) -> None:
            tracker.phase = "optimizer_step"

        def on_step_end(self, *a: Any, **k: Any) -> None:
            tracker.phase = "between_steps"

    trainer.add_callback(_Phases())
    if hasattr(trainer, "_generate_single_turn"):   # GRPO: label generation as its own phase
        generate = trainer._generate_single_turn

        def _generation(*args: Any, **kwargs: Any) -> Any:
            tracker.phase = "generation"
            try:
                return generate(*args, **kwargs)
            finally:
                tracker.phase = "step"

        trainer._generate_single_turn = _generation
    model = trainer.model
    tracker.register(model.parameters(), "weights")
    tracker.register(model.buffers(), "weights")
    ref = getattr(trainer, "ref_model", None)
    if ref is not None:
        tracker.register(ref.parameters(), "weights")
    with tracker:
        trainer.train()
    return TrlMeasured(tracker.peak_bytes, tracker.peak_phase, dict(tracker.phase_peaks))


def run_case(case: TrlCase, *, steps: int = 2) -> tuple[Any, TrlMeasured]:
    """Build the trainer, train it under the tracker; returns (trainer, measured)."""
    with tempfile.TemporaryDirectory() as workdir:
        trainer = build_trainer(case, workdir, steps=steps)
        return trainer, measure_trainer(trainer)


# The TRL accuracy cases (benchmarks/accuracy.py --trl): each a real run on CPU, fp32 weights, LoRA r=8 all-linear.
NO_GC = {"gradient_checkpointing": False}
TRL_CASES: tuple[TrlCase, ...] = (
    TrlCase("sft text fused head 4x256 vocab 32k", "sft", vocab=32000, batch_size=4, lengths=(255, 255), config=NO_GC),
    TrlCase("sft text +gc (TRL default) vocab 32k", "sft", vocab=32000, batch_size=4, lengths=(255, 255)),
    TrlCase("sft packing 2x256 vocab 32k", "sft", vocab=32000, batch_size=2, lengths=(63, 63),
            config={**NO_GC, "packing": True, "max_length": 256}),
    TrlCase("dpo lora 2x(64+64) vocab 32k", "dpo", vocab=32000, batch_size=2, lengths=(128, 128), config=NO_GC),
    TrlCase("grpo lora length reward 4x(64+64)", "grpo", vocab=8000, batch_size=4, lengths=(32, 64),
            config={**NO_GC, "num_generations": 4, "max_completion_length": 64}),
)
