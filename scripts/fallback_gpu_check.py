"""GPU check of the fallback path (not part of the test suite; needs a CUDA GPU).

1. In-place 4-bit conversion on CUDA: TinyLlama-1.1B (random weights) with LoRA q,v in bf16; convert the
   frozen base linears with ``quantize_base_linears`` and compare the memory it reports freed with
   ``torch.cuda.memory_allocated``; relative change of the logits; three Trainer steps with a finite loss.
2. ``oom_guard`` on a real CUDA out-of-memory: cap the process at 6 GiB with
   ``torch.cuda.set_per_process_memory_fraction`` and train a batch that cannot fit.

    python scripts/fallback_gpu_check.py            # on a GPU machine
    python scripts/fallback_gpu_check.py --smoke    # part 1 on CPU with a tiny model: checks the script
"""
import os, sys, tempfile
sys.path.insert(0, os.getcwd())
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from lora_doctor.catalog import lookup
from lora_doctor.fallback.convert import quantize_base_linears
from lora_doctor.models import config_from_dict

SMOKE = "--smoke" in sys.argv
DEV = "cpu" if SMOKE else "cuda"
GIB = 1024**3
fields = (dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=256) if SMOKE else lookup("TinyLlama/TinyLlama-1.1B-Chat-v1.0").config)


def build():
    torch.manual_seed(0)
    with torch.device(DEV):
        model = AutoModelForCausalLM.from_config(config_from_dict(fields), dtype=torch.bfloat16)
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))


def allocated():
    if SMOKE:
        return 0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def data(n, seq, vocab):
    ids = torch.randint(0, vocab, (n, seq))
    return [{"input_ids": r, "labels": r} for r in ids]


def part1():
    model = build()
    probe = torch.randint(0, fields["vocab_size"], (2, 128), device=DEV)
    with torch.no_grad():
        before_logits = model(input_ids=probe).logits.float()
    trainable = {n: id(p) for n, p in model.named_parameters() if p.requires_grad}
    a0 = allocated()
    conv = quantize_base_linears(model, compute_dtype=torch.bfloat16)
    a1 = allocated()
    with torch.no_grad():
        after_logits = model(input_ids=probe).logits.float()
    rel = ((after_logits - before_logits).norm() / before_logits.norm()).item()
    same = trainable == {n: id(p) for n, p in model.named_parameters() if p.requires_grad}
    print(f"converted {len(conv.converted)} linears; reported freed {conv.freed_bytes / GIB:.3f} GiB; "
          f"measured freed {(a0 - a1) / GIB:.3f} GiB (allocated {a0 / GIB:.3f} -> {a1 / GIB:.3f} GiB)")
    print(f"logits relative change after NF4: {rel:.4f}; trainable parameter objects unchanged: {same}")
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=3, per_device_train_batch_size=2, bf16=not SMOKE,
                                 use_cpu=SMOKE, report_to=[], save_strategy="no", disable_tqdm=True,
                                 logging_steps=1, learning_rate=1e-4)
        tr = Trainer(model=model, args=args, train_dataset=data(6, 256, fields["vocab_size"]))
        tr.train()
        losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
        print(f"trained 3 steps after conversion: losses {losses}; peak allocated "
              f"{(0 if SMOKE else torch.cuda.max_memory_allocated()) / GIB:.2f} GiB")


def part2():
    from lora_doctor import oom_guard
    from lora_doctor.fallback.oom import TrainingOutOfMemoryError

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(6 * GIB / total)
    model = build()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=2, per_device_train_batch_size=16, bf16=True,
                                 report_to=[], save_strategy="no", disable_tqdm=True)
        tr = Trainer(model=model, args=args, train_dataset=data(32, 2048, fields["vocab_size"]))
        try:
            with oom_guard(tr, gpu="6GB"):
                tr.train()
            print("no OOM happened (unexpected)")
        except TrainingOutOfMemoryError as exc:
            print("caught TrainingOutOfMemoryError, isinstance torch.OutOfMemoryError:",
                  isinstance(exc, torch.OutOfMemoryError))
            print(str(exc)[:3000])


print(torch.__version__, "smoke" if SMOKE else torch.cuda.get_device_name())
part1()
if not SMOKE:
    part2()
