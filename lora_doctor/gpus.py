"""GPU specifications: a built-in table of common cards, size strings, and the local GPU via NVML.

Memory figures are the totals NVML / ``nvidia-smi`` report for each card (MiB), which is what an
out-of-memory happens against, not the marketing number. ``count`` is the number of such GPUs
(``"8xH100"``); :func:`parse_gpu` is the one parser of every GPU argument (API, CLI, callback).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace

from .errors import GpuNotAvailableError, InvalidGpuError, InvalidSettingError
from .units import MIB, format_bytes, parse_size


@dataclass(frozen=True)
class GpuSpec:
    """One kind of GPU: its name, memory per device in bytes, and whether it computes in bf16."""

    name: str
    memory_bytes: int
    bf16: bool = True
    count: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


# name -> (MiB as reported by NVML, bf16 support). Aliases map onto these keys.
_TABLE: dict[str, tuple[int, bool]] = {
    "RTX3060": (12288, True),
    "RTX3080": (10240, True),
    "RTX3090": (24576, True),
    "RTX4060TI": (16380, True),
    "RTX4080": (16376, True),
    "RTX4090": (24564, True),
    "RTX2080TI": (11264, False),
    "RTXA6000": (49140, True),
    "RTX6000ADA": (49140, True),
    "T4": (15360, False),
    "L4": (23034, True),
    "A10G": (23028, True),
    "A10": (23028, True),
    "L40S": (46068, True),
    "V100-16GB": (16160, False),
    "V100-32GB": (32768, False),
    "A100-40GB": (40960, True),
    "A100-80GB": (81920, True),
    "H100": (81559, True),
    "H100-94GB": (95830, True),
    "H200": (143771, True),
}
_ALIASES = {
    "3060": "RTX3060", "3080": "RTX3080", "3090": "RTX3090", "4090": "RTX4090", "4080": "RTX4080",
    "4060TI": "RTX4060TI", "2080TI": "RTX2080TI", "A6000": "RTXA6000", "V100": "V100-16GB",
    "A100": "A100-80GB", "A100-40G": "A100-40GB", "A100-80G": "A100-80GB", "H100-80GB": "H100",
    "H100-SXM": "H100", "H100-PCIE": "H100", "H100-NVL": "H100-94GB", "A10-24GB": "A10", "L40": "L40S",
}
# GPUs shown when the user gives no --gpu: the ladder practitioners actually rent or own.
COMMON_GPUS = ("RTX3060", "T4", "RTX4090", "L4", "A100-40GB", "A100-80GB", "H100")


def _normalize(name: str) -> str:
    key = re.sub(r"[\s_]+", "", name.upper())
    key = key.replace("GEFORCE", "").replace("NVIDIA", "")
    return key


def known_gpu_names() -> list[str]:
    return sorted(_TABLE)


def gpu_by_name(name: str) -> GpuSpec | None:
    key = _normalize(name)
    key = _ALIASES.get(key, key)
    if key not in _TABLE and key.startswith("RTX"):
        key = _ALIASES.get(key[3:], key)
    if key not in _TABLE:
        return None
    mib, bf16 = _TABLE[key]
    return GpuSpec(key, mib * MIB, bf16)


MIN_GPU_BYTES = 256 * MIB      # smaller than any GPU one trains on: surely a missing or wrong unit
MAX_GPU_COUNT = 4096
_COUNT_RE = re.compile(r"^(\d{1,6})\s*[xX\u00d7*]\s*(\S.*)$")     # "8xH100", "2 x 24GB", "4*A100"
_NUMBER_RE = re.compile(r"^(\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})$")
_SIZE_WITH_UNIT_RE = re.compile(r"^(\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})\s*[a-zA-Z]{1,4}$")
_HELP = "give a size (24GB, 24GiB, 80G, a byte count), 'auto', or a GPU name such as RTX4090, A100-80GB, H100"


def parse_gpu(spec: "str | int | float | GpuSpec | None") -> GpuSpec | None:
    """Turn ``"24GB"``, ``"24GiB"``, ``"80G"``, a byte count, a GPU name or ``"auto"`` into a GpuSpec.

    A count prefix gives several identical GPUs: ``"8xH100"``, ``"2x24GB"``, ``"2 x RTX4090"`` ->
    ``GpuSpec(count=N)`` (memory is per device). ``None`` means "no GPU given". Sizes without a name
    are assumed to support bf16. One rule for every form: a GPU has at least 256 MiB, so ``"24"``,
    ``"1B"`` or ``"0.0000001GB"`` are errors that suggest a unit. Raises :class:`InvalidGpuError`.
    """
    if spec is None or isinstance(spec, GpuSpec):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if isinstance(spec, float) and not math.isfinite(spec):
            raise InvalidGpuError(f"not a GPU: {spec!r} ({_HELP})")
        text = str(int(spec)) if float(spec).is_integer() else str(spec)
        return GpuSpec(f"{text} B", _checked_size(spec, text, bare=True))
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidGpuError(f"not a GPU: {spec!r} (expected a size such as 24GB, a GPU name, or auto)")
    text = spec.strip()
    if len(text) > 64:
        raise InvalidGpuError(f"not a GPU: {text[:40]!r}... is {len(text)} characters long; {_HELP}")
    count = 1
    counted = _COUNT_RE.match(text)
    if counted and gpu_by_name(text) is None:
        count, text = int(counted.group(1)), counted.group(2).strip()
        if not 1 <= count <= MAX_GPU_COUNT:
            raise InvalidGpuError(f"GPU count in {spec!r} must be between 1 and {MAX_GPU_COUNT}")
    if text.lower() == "auto":
        if count != 1:
            raise InvalidGpuError(f"{spec!r}: 'auto' counts the local GPUs itself; pass --gpu auto")
        return detect_local_gpu()
    return replace(_one_gpu(text, spec), count=count)


def _one_gpu(text: str, spec: str) -> GpuSpec:
    named = gpu_by_name(text)
    if named is not None:
        return named
    if _NUMBER_RE.match(text):
        return GpuSpec(f"{text} B", _checked_size(text, text, bare=True))
    if not _SIZE_WITH_UNIT_RE.match(text):
        raise InvalidGpuError(f"unknown GPU {spec!r}: {_HELP}")
    return GpuSpec(text, _checked_size(text, text, bare=False))


def _checked_size(value: "str | int | float", text: str, *, bare: bool) -> int:
    """Bytes of one GPU; too small to be a GPU is almost surely a size without (or with the wrong) unit."""
    try:
        size = parse_size(value)
    except InvalidSettingError as exc:
        raise InvalidGpuError(f"unknown GPU {text!r} ({exc}): {_HELP}") from None
    if size < MIN_GPU_BYTES:
        hint = f"would be {text} bytes; did you mean {text}GB?" if bare else \
            f"is {format_bytes(size)}; give the memory of one GPU, e.g. 24GB"
        raise InvalidGpuError(f"--gpu {text} {hint} (a GPU has at least 256 MiB)")
    return size


def detect_local_gpu(index: int = 0) -> GpuSpec:
    """The local GPU via NVML (``nvidia-ml-py``). Raises GpuNotAvailableError when there is none."""
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - dependency is declared
        raise GpuNotAvailableError("gpu='auto' needs nvidia-ml-py (pip install nvidia-ml-py)") from exc
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        raise GpuNotAvailableError(
            f"gpu='auto' found no NVIDIA GPU ({exc}); pass a size or a name instead, e.g. --gpu 24GB"
        ) from None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            raise GpuNotAvailableError("gpu='auto': NVML sees no GPU; pass --gpu 24GB or a GPU name")
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        major, _minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        return GpuSpec(name, total, bf16=major >= 8, count=count)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
