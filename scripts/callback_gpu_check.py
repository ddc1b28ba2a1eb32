"""GPU smoke check of LoraDoctorCallback (not part of the test suite; needs a CUDA GPU).

    python scripts/callback_gpu_check.py

Trains a small bf16 LoRA Llama on the GPU four times (healthy; gradient explosion with "stop"; NaN
gradients caught at the next logging step; NaN caught at once with check_every=1) and prints the
console output, findings, doctor/ metrics and memory readings of each. Then, for the overhead on a GPU:

    python benchmarks/callback_overhead.py --steps 60 --rounds 2 --batch 8 --seq-len 512
"""
import io, json, math, os, sys, tempfile
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from callback_support import TokenDataset
from lora_doctor import LoraDoctorCallback
from lora_doctor.callback import DoctorConsole

def model_lora():
    from transformers import AutoModelForCausalLM, LlamaConfig
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=1024, max_position_embeddings=512)
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))

class Scale(TrainerCallback):
    def __init__(self, model, step, factor):
        self.step, self.factor, self.active = step, factor, False
        for p in model.parameters():
            if p.requires_grad: p.register_hook(lambda g: g * self.factor if self.active else g)
    def on_step_begin(self, args, state, control, **kw): self.active = state.global_step + 1 == self.step

def run(name, factor, step, **cbkw):
    m = model_lora().cuda()
    out = io.StringIO()
    cb = LoraDoctorCallback(console=DoctorConsole(file=out), **cbkw)
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=30, per_device_train_batch_size=8, logging_steps=10,
                             save_strategy="no", report_to="none", disable_tqdm=True, bf16=True, learning_rate=1e-3)
    extra = [Scale(m, step, factor)] if factor is not None else []
    tr = Trainer(model=m, args=args, train_dataset=TokenDataset(512, 128, 1024), callbacks=[*extra, cb])
    tr.train()
    print(f"===== {name}: stopped_at={cb.stopped_at} checkpoint={cb.checkpoint} exists={cb.checkpoint and os.path.isdir(cb.checkpoint)}")
    print(out.getvalue())
    for f in cb.findings: print("  F", f.severity, f.code, f.data.get("step"), f.message[:160])
    print("  last log:", json.dumps({k: v for k, v in tr.state.log_history[-2].items() if k.startswith("doctor/")}))
    print("  memory:", cb.memory)

print(torch.__version__, torch.cuda.get_device_name())
import transformers, peft; print(transformers.__version__, peft.__version__)
run("healthy", None, 0)
run("explosion stop", 1e3, 15, on_explosion="stop")
run("nan default", math.nan, 13)
run("nan check_every=1", math.nan, 13, check_every=1)
