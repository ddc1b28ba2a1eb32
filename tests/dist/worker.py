"""One torchrun rank: real Trainer runs with LoraDoctorCallback over gloo on CPU (tests/test_distributed_callback.py).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist/worker.py ddp,fsdp2 OUT_DIR

Each scenario writes OUT_DIR/<scenario>.rank<r>.json (and .pt weights) as soon as it finishes, so a later
hang does not hide earlier results. Failures are injected through the real code path (a patched method
raising on one rank), as a bug in lora-doctor would.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from callback_support import TokenDataset, tiny_lora  # noqa: E402  first: offline env, one thread

import torch  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from lora_doctor.callback import DoctorConsole, LoraDoctorCallback, SpikeRule, Thresholds  # noqa: E402

RANK = int(os.environ.get("RANK", "0"))


class ScaleGradientsAt(TrainerCallback):
    """On rank ``rank`` only, multiplies every trainable gradient by ``factor`` during optimizer step ``step``."""

    def __init__(self, model, rank: int, step: int, factor: float) -> None:
        self.step, self.factor, self.active = step, factor, False
        if RANK == rank:
            for p in model.parameters():
                if p.requires_grad:
                    p.register_hook(lambda g: g * self.factor if self.active else g)

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 == self.step


def arguments(out: str, name: str, steps: int, **extra) -> TrainingArguments:
    settings = dict(output_dir=os.path.join(out, name), max_steps=steps, per_device_train_batch_size=4,
                    learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                    use_cpu=True, seed=0, dataloader_num_workers=0, ddp_timeout=90)
    return TrainingArguments(**{**settings, **extra})


def run(out: str, name: str, *, steps: int = 6, model=None, extra=(), args=None, **callback_kwargs) -> dict:
    model = model if model is not None else tiny_lora()
    text = io.StringIO()
    cb = LoraDoctorCallback(console=DoctorConsole(file=text), **callback_kwargs)
    trainer = Trainer(model=model, args=arguments(out, name, steps, **(args or {})), train_dataset=TokenDataset(),
                      callbacks=[*[make(model) for make in extra], cb])
    started = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    result = {
        "rank": RANK, "seconds": time.time() - started, "global_step": trainer.state.global_step,
        "stopped_at": cb.stopped_at, "checkpoint": cb.checkpoint, "console": text.getvalue(),
        "findings": [{"code": f.code, "severity": f.severity, "message": f.message,
                      "data": {k: v for k, v in f.data.items() if isinstance(v, (int, float, str, type(None)))}}
                     for f in cb.findings],
        "logs": [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in trainer.state.log_history],
        "doctor_warnings": [str(w.message) for w in caught if "lora-doctor" in str(w.message)],
    }
    from peft import get_peft_model_state_dict

    weights = {k: v.detach().full_tensor() if hasattr(v, "full_tensor") else v.detach()
               for k, v in get_peft_model_state_dict(model).items()}
    torch.save(weights, os.path.join(out, f"{name}.rank{RANK}.pt"))
    with open(os.path.join(out, f"{name}.rank{RANK}.json"), "w") as f:
        json.dump(result, f, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v))
    return result


def failing_on(rank: int, cls: type, method: str, exc: BaseException, when=lambda self, *a: True) -> None:
    """Patch ``cls.method`` to raise ``exc`` on ``rank`` whenever ``when(self, *args)`` says so."""
    original = getattr(cls, method)

    def patched(self, *args, **kwargs):
        if RANK == rank and when(self, *args):
            raise exc
        return original(self, *args, **kwargs)

    setattr(cls, method, patched)


def ddp(out: str) -> None:
    from lora_doctor.callback import monitor, probes

    run(out, "metrics", steps=4)
    run(out, "nan", steps=6, extra=[lambda m: ScaleGradientsAt(m, 1, 3, math.nan)])
    run(out, "spike", steps=8, on_explosion="stop", thresholds=Thresholds(grad_norm=SpikeRule(window=10, warmup=3)),
        extra=[lambda m: ScaleGradientsAt(m, 1, 6, 1e4)])
    # bugs inside the callback, one rank at a time; each run must still finish on both ranks
    failing_on(1, monitor.Monitor, "judge", RuntimeError("injected: judge failed on rank 1"))
    failing_on(1, probes.GradProbe, "end_step", RuntimeError("injected: end_step failed on rank 1"),
               when=lambda self, step, *a: step >= 4)
    failing_on(0, DoctorConsole, "emit", OSError(28, "No space left on device (injected on rank 0)"))
    run(out, "failures", steps=6, on_nonfinite="warn", extra=[lambda m: ScaleGradientsAt(m, 0, 5, math.nan)])
    failing_on(1, monitor.Monitor, "__init__", RuntimeError("injected: no monitor on rank 1"))
    run(out, "no-monitor", steps=4, extra=[lambda m: ScaleGradientsAt(m, 0, 2, math.nan)])


def fsdp2(out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    model = tiny_lora()
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    model.is_distributed_loading_by_transformers = True   # sharded already: the Trainer must not wrap it in DDP
    run(out, "fsdp2", steps=4, model=model)


def zero2(out: str) -> None:
    """DeepSpeed ZeRO-2 on GPUs (NCCL); on a CPU-only machine DeepSpeed does not get to its first step."""
    config = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto",
              "train_batch_size": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}
    run(out, "zero2", steps=4, args={"deepspeed": config, "use_cpu": False})


if __name__ == "__main__":
    scenario, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    for name in scenario.split(","):   # one launch for several: each launch costs ~20-40 s of imports
        {"ddp": ddp, "fsdp2": fsdp2, "zero2": zero2}[name](out_dir)
