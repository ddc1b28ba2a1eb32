from __future__ import annotations

import pytest

from lora_doctor import GpuSpec, InvalidGpuError, InvalidSettingError, parse_gpu
from lora_doctor.gpus import gpu_by_name
from lora_doctor.units import GIB, format_bytes, parse_size


@pytest.mark.parametrize("text,expected", [
    ("24GB", 24 * GIB), ("24GiB", 24 * GIB), ("80G", 80 * GIB), ("512MiB", 512 * 1024**2),
    ("1.5 GB", int(1.5 * GIB)), (1000, 1000), ("1000", 1000), ("40GBd", 40 * 10**9),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "GB", "24 parsecs", "-3GB", "0", 0, True])
def test_parse_size_rejects(bad):
    with pytest.raises(InvalidSettingError):
        parse_size(bad)


def test_format_bytes():
    assert format_bytes(3 * GIB) == "3.00 GiB"
    assert format_bytes(1536 * 1024) == "1.50 MiB"
    assert format_bytes(-2 * GIB) == "-2.00 GiB"


@pytest.mark.parametrize("name,key", [
    ("RTX3090", "RTX3090"), ("3090", "RTX3090"), ("rtx 4090", "RTX4090"), ("4090", "RTX4090"),
    ("3060", "RTX3060"), ("T4", "T4"), ("L4", "L4"), ("A10G", "A10G"), ("V100-16GB", "V100-16GB"),
    ("A100-40GB", "A100-40GB"), ("A100-80GB", "A100-80GB"), ("H100", "H100"), ("H200", "H200"),
    ("NVIDIA GeForce RTX 4090", "RTX4090"),
])
def test_gpu_names(name, key):
    spec = parse_gpu(name)
    assert spec.name == key and spec.memory_bytes == gpu_by_name(key).memory_bytes


def test_gpu_table_knows_bf16():
    assert parse_gpu("A100-80GB").bf16 and parse_gpu("RTX3090").bf16
    assert not parse_gpu("T4").bf16 and not parse_gpu("V100-16GB").bf16


def test_gpu_sizes_and_bytes():
    assert parse_gpu("24GB").memory_bytes == 24 * GIB
    assert parse_gpu(24 * GIB).memory_bytes == 24 * GIB
    assert parse_gpu(None) is None
    spec = GpuSpec("x", 10)
    assert parse_gpu(spec) is spec


@pytest.mark.parametrize("bad", ["RTX9999", "banana", "24 parsecs", ""])
def test_bad_gpu_is_a_clear_error(bad):
    with pytest.raises(InvalidGpuError) as info:
        parse_gpu(bad)
    assert "24GB" in str(info.value)


def test_auto_without_gpu_is_a_clear_error():
    from lora_doctor import GpuNotAvailableError

    try:
        spec = parse_gpu("auto")
    except GpuNotAvailableError as exc:
        assert "--gpu" in str(exc)
    else:  # a machine with a GPU: it must describe it
        assert spec.memory_bytes > 0


def test_bare_small_number_is_not_silently_bytes():
    with pytest.raises(InvalidGpuError) as info:
        parse_gpu("24")
    assert "24GB" in str(info.value)
    with pytest.raises(InvalidGpuError):
        parse_gpu(24)


def test_megabytes_follow_the_binary_card_convention():
    assert parse_gpu("16384MB").memory_bytes == 16 * GIB == parse_gpu("16GB").memory_bytes
