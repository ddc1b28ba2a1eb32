"""Predicted vs measured peak memory on a real CUDA GPU (run where a GPU is available).

For each case, in a fresh subprocess (so the CUDA context and allocator start clean): build the model
from its catalog config directly on the GPU with random weights (QLoRA: saved and reloaded through
``BitsAndBytesConfig``, as users load it), wrap it with peft, run three real ``Trainer`` steps, and
record ``torch.cuda.max_memory_allocated``, ``max_memory_reserved`` and the NVML device peak (polled
every 5 ms). The prediction is ``lora_doctor.plan(..., device="cuda")`` for the same settings.

    python benchmarks/gpu_validate.py --out benchmarks/results/gpu_h200.md
    python benchmarks/gpu_validate.py --only tinyllama          # cases whose name contains it
    python benchmarks/gpu_validate.py --smoke                   # tiny models on CPU: checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 1024**3
QV = ["q_proj", "v_proj"]
# name, catalog model, plan settings (keyword arguments of lora_doctor.plan)
CASES = [
    ("llama2-7b lora q,v bf16 b1 s2048", "meta-llama/Llama-2-7b-hf",
     dict(mode="lora", target_modules=QV, batch_size=1, seq_len=2048)),
    ("llama2-7b lora all-linear bf16 b4 s1024 gc", "meta-llama/Llama-2-7b-hf",
     dict(mode="lora", target_modules="all-linear", batch_size=4, seq_len=1024, gradient_checkpointing=True)),
    ("llama2-7b lora q,v eager b1 s1024", "meta-llama/Llama-2-7b-hf",
     dict(mode="lora", target_modules=QV, batch_size=1, seq_len=1024, attn_implementation="eager")),
    ("llama2-7b full bf16 adamw b1 s1024 gc", "meta-llama/Llama-2-7b-hf",
     dict(mode="full", batch_size=1, seq_len=1024, gradient_checkpointing=True)),
    ("qwen2.5-0.5b full bf16 adamw b4 s2048", "Qwen/Qwen2.5-0.5B",
     dict(mode="full", batch_size=4, seq_len=2048)),
    ("tinyllama lora q,v fp32+bf16 autocast b2 s1024", "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
     dict(mode="lora", target_modules=QV, dtype="fp32", mixed_precision="bf16", batch_size=2, seq_len=1024)),
    ("tinyllama qlora all-linear bf16 autocast b4 s2048 gc", "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
     dict(mode="qlora", target_modules="all-linear", mixed_precision="bf16", batch_size=4, seq_len=2048,
          gradient_checkpointing=True)),
    ("llama3.2-1b qlora q,v bf16 autocast b2 s4096", "meta-llama/Llama-3.2-1B",
     dict(mode="qlora", target_modules=QV, mixed_precision="bf16", batch_size=2, seq_len=4096)),
    ("gpt2 full fp32 adamw b8 s1024", "openai-community/gpt2",
     dict(mode="full", dtype="fp32", batch_size=8, seq_len=1024)),
    ("mixtral-8x7b lora q,v bf16 b1 s1024", "mistralai/Mixtral-8x7B-v0.1",
     dict(mode="lora", target_modules=QV, batch_size=1, seq_len=1024)),
    ("gemma-2-2b lora q,v bf16 eager b2 s2048", "google/gemma-2-2b",
     dict(mode="lora", target_modules=QV, batch_size=2, seq_len=2048, attn_implementation="eager")),
]
SMOKE_CONFIG = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=256)


def _nvml_used() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    except Exception:
        return None


class _NvmlPoller(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            used = _nvml_used()
            if used is None:
                return
            self.peak = max(self.peak, used)
            time.sleep(0.005)


def run_case(name: str, model_id: str, kw: dict, smoke: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainingArguments

    from lora_doctor import plan
    from lora_doctor.catalog import lookup
    from lora_doctor.models import config_from_dict
    from lora_doctor.torch_dtypes import torch_dtype

    device = "cpu" if smoke else "cuda"
    fields = SMOKE_CONFIG if smoke else lookup(model_id).config
    predicted = plan(fields, device=device, **kw)
    config = config_from_dict(fields)
    s = predicted.settings
    dtype = torch_dtype(s.dtype)

    before = _nvml_used() or 0
    if not smoke:
        torch.cuda.init()
        a = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
        (a @ a).sum().item()  # cuBLAS handle and workspace, as training will have
        del a
        torch.cuda.synchronize()
        context = (_nvml_used() or 0) - before - torch.cuda.memory_reserved()
    else:
        context = 0
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if s.mode == "qlora":
            with torch.device(device):
                AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(tmp)
            if not smoke:
                torch.cuda.empty_cache()
            bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=s.quant_type,
                                     bnb_4bit_use_double_quant=s.double_quant, bnb_4bit_compute_dtype=torch.bfloat16)
            model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=bnb, dtype=dtype,
                                                         attn_implementation=s.attn_implementation,
                                                         device_map={"": device})
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=s.gradient_checkpointing)
        else:
            config._attn_implementation = s.attn_implementation
            with torch.device(device):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        if s.mode != "full":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=s.r, lora_alpha=s.lora_alpha, target_modules=s.target_modules,
                                                     lora_dropout=0.0, task_type="CAUSAL_LM"))
        ids = torch.randint(0, config.vocab_size, (s.batch_size * 3, s.seq_len))
        data = [{"input_ids": row, "labels": row} for row in ids]
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=s.batch_size, max_steps=3,
                                 optim=s.optim, learning_rate=1e-5, gradient_checkpointing=s.gradient_checkpointing,
                                 bf16=s.mixed_precision == "bf16", fp16=s.mixed_precision == "fp16",
                                 use_cpu=smoke, report_to=[], save_strategy="no", logging_strategy="no",
                                 disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=data)
        poller = _NvmlPoller()
        if not smoke:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            poller.start()
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        poller.stop = True
        if smoke:
            allocated = reserved = device_peak = 0
        else:
            torch.cuda.synchronize()
            allocated = torch.cuda.max_memory_allocated()
            reserved = torch.cuda.max_memory_reserved()
            poller.join()
            device_peak = poller.peak - before
    return dict(name=name, predicted_peak=predicted.peak_bytes, predicted_device=predicted.device_peak_bytes,
                predicted_phase=predicted.peak_phase, measured_allocated=allocated, measured_reserved=reserved,
                measured_device=device_peak, context=context, seconds=round(seconds, 1),
                breakdown=predicted.breakdown)


def _row(r: dict) -> str:
    if "error" in r:
        return f"| {r['name']} | failed: {r['error'][:120]} | | | | | | |"
    e1 = 100 * (r["predicted_peak"] - r["measured_allocated"]) / r["measured_allocated"] if r["measured_allocated"] else 0
    e2 = 100 * (r["predicted_device"] - r["measured_device"]) / r["measured_device"] if r["measured_device"] else 0
    return (f"| {r['name']} | {r['measured_allocated'] / GIB:.2f} | {r['predicted_peak'] / GIB:.2f} | {e1:+.1f}% "
            f"| {r['measured_reserved'] / GIB:.2f} | {r['measured_device'] / GIB:.2f} | "
            f"{r['predicted_device'] / GIB:.2f} | {e2:+.1f}% | {r['context'] / 2**20:.0f} |")


HEADER = ("| case | max_memory_allocated GiB | predicted GiB | error | max_memory_reserved GiB | "
          "NVML device peak GiB | predicted device GiB | error | CUDA context MiB |\n|---|---|---|---|---|---|---|---|---|")


def rescore(path: Path, out: Path | None) -> int:
    """Recompute predictions for stored GPU measurements (no GPU needed), e.g. after a model change."""
    from lora_doctor import plan
    from lora_doctor.catalog import lookup

    rows = json.loads(path.read_text())
    cases = {c[0]: c for c in CASES}
    for r in rows:
        if "error" in r:
            continue
        _, model_id, kw = cases[r["name"]]
        p = plan(lookup(model_id).config, device="cuda", **kw)
        r.update(predicted_peak=p.peak_bytes, predicted_device=p.device_peak_bytes, breakdown=p.breakdown)
    text = HEADER + "\n" + "\n".join(_row(r) for r in rows) + "\n"
    print(text)
    if out:
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--only", default="")
    ap.add_argument("--out")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--timeout", type=int, default=150)
    ap.add_argument("--rescore", help="re-predict the measurements in this JSON with the current planner")
    args = ap.parse_args()
    if args.rescore:
        return rescore(Path(args.rescore), Path(args.out) if args.out else None)
    if args.case:
        name, model_id, kw = next(c for c in CASES if c[0] == args.case)
        print("RESULT " + json.dumps(run_case(name, model_id, kw, args.smoke)), flush=True)
        return 0
    header = HEADER
    rows = []
    print(header, flush=True)
    for name, _, _ in CASES:
        if args.only not in name:
            continue
        cmd = [sys.executable, __file__, "--case", name] + (["--smoke"] if args.smoke else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            result = json.loads(line[7:]) if line else {"name": name, "error": proc.stderr.strip().splitlines()[-1:]}
            if isinstance(result.get("error"), list):
                result["error"] = " ".join(result["error"])
        except subprocess.TimeoutExpired:
            result = {"name": name, "error": f"timed out after {args.timeout}s"}
        rows.append(result)
        print(_row(result), flush=True)
        if args.out:
            Path(args.out).write_text(header + "\n" + "\n".join(_row(r) for r in rows) + "\n")
            Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
