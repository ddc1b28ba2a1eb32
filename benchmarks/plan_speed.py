"""How fast is ``lora-doctor plan`` (analytic, the default) and the traced planner?

Part 1 times the CLI end to end (a fresh ``python -m lora_doctor plan MODEL --gpu 24GB`` process,
imports included) for catalog models: goal, median under 1.0 s on a 2-core machine.
Part 2: the traced planner.

Each case runs in a fresh subprocess (so imports count, as they do for ``lora-doctor plan --trace``)
and reports wall time, CPU time, the time of the ``plan(..., engine="trace")`` call alone, and peak
resident memory. Goals (2-core machine): Llama-2-7B LoRA b1 s2048 < 20 s, Llama-2-70B < 90 s, RSS < 2 GB.

    HF_HUB_OFFLINE=1 python benchmarks/plan_speed.py
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # (model, mode, seq_len, gradient checkpointing, goal seconds)
    ("meta-llama/Llama-2-7b-hf", "lora", 2048, False, 20),
    ("meta-llama/Llama-2-7b-hf", "qlora", 2048, True, 20),
    ("meta-llama/Llama-2-70b-hf", "lora", 2048, False, 90),
]
CHILD = """
import json, sys, time
t0 = time.perf_counter()
from lora_doctor.planner import plan
model, mode, seq, gc = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
t1 = time.perf_counter()
p = plan(model, mode=mode, seq_len=seq, gradient_checkpointing=gc, engine="trace")
t2 = time.perf_counter()
print(json.dumps({"engine": p.engine, "peak": p.peak_bytes, "phase": p.peak_phase, "import_s": t1 - t0,
                  "plan_s": t2 - t1, "ops": p.details.get("ops")}))
"""


def run_case(model: str, mode: str, seq: int, gc: bool) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, model, mode, str(seq), "1" if gc else "0"],
                         env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(wall_s=wall, cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
                  rss_mb=after.ru_maxrss / 1024)  # max RSS over children so far (cases run in rising size)
    return result


CLI_MODELS = ["meta-llama/Llama-2-7b-hf", "meta-llama/Meta-Llama-3-70B", "Qwen/Qwen2.5-7B", "openai-community/gpt2"]


def time_cli(model: str, repeats: int = 7) -> list[float]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lora_doctor", "plan", model, "--gpu", "24GB"], env=env,
                       capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    import statistics

    print(f"{'lora-doctor plan MODEL --gpu 24GB':40s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'goal s':>7s}")
    ok = True
    for model in CLI_MODELS:
        t = time_cli(model)
        good = statistics.median(t) < 1.0
        ok &= good
        print(f"{model:40s} {statistics.median(t):9.2f} {min(t):7.2f} {max(t):7.2f} {1.0:7.1f}{'' if good else '  MISSED'}",
              flush=True)
    print()
    print(f"{'model':28s} {'mode':5s} {'seq':>5s} {'gc':>3s} {'peak GiB':>9s} {'plan s':>7s} {'wall s':>7s} "
          f"{'cpu s':>6s} {'RSS MB':>7s} {'goal s':>6s}")
    for model, mode, seq, gc, goal in CASES:
        r = run_case(model, mode, seq, gc)
        good = r["engine"] == "trace" and r["wall_s"] < goal and r["rss_mb"] < 2048
        ok &= good
        print(f"{model:28s} {mode:5s} {seq:5d} {'y' if gc else 'n':>3s} {r['peak'] / 2**30:9.2f} {r['plan_s']:7.1f} "
              f"{r['wall_s']:7.1f} {r['cpu_s']:6.1f} {r['rss_mb']:7.0f} {goal:6d} {'' if good else '  MISSED'}",
              flush=True)
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
