from __future__ import annotations

import pytest

from enserve.devices import Device, detect_devices, parse_device_decl, parse_memory


def test_declared_gpus() -> None:
    devices = parse_device_decl("4xcuda:16GB")
    assert [d.id for d in devices] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert all(d.kind == "cuda" and d.memory_bytes == 16 * 2**30 and d.compute_units == 100
               for d in devices)


def test_mixed_declaration_numbers_per_kind() -> None:
    devices = parse_device_decl("cpu:64GB:16, 2xcuda:80GiB, cpu:8GB:2, cuda:512MB:50")
    assert [(d.id, d.compute_units) for d in devices] == [
        ("cpu", 16), ("cuda:0", 100), ("cuda:1", 100), ("cpu:1", 2), ("cuda:2", 50)]
    assert devices[4].memory_bytes == 512 * 2**20


@pytest.mark.parametrize("text, message", [
    ("cpu:8GB", "core count"),
    ("cuda", "memory"),
    ("tpu:8GB", "kind"),
    ("cuda:16", "unit"),
    ("0xcuda:16GB", "at least 1"),
    ("cuda:16GB:1:2", "too many"),
    ("", "empty"),
])
def test_bad_declarations(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_device_decl(text)


def test_memory_units_are_binary() -> None:
    assert parse_memory("1KB") == 1024
    assert parse_memory("1.5 GiB") == int(1.5 * 2**30)
    assert parse_memory("100B") == 100


def test_device_validation_and_round_trip() -> None:
    d = Device("cuda:0", "cuda", 2**30, 100.0)
    assert d.to_dict() == {"id": "cuda:0", "kind": "cuda", "memory_bytes": 2**30,
                           "compute_units": 100}
    assert Device.from_dict(d.to_dict() | {"extra": 1}) == d
    with pytest.raises(ValueError, match="memory_bytes"):
        Device("cpu", "cpu", 0, 1)
    with pytest.raises(ValueError, match="compute_units"):
        Device("cpu", "cpu", 1, 0)
    with pytest.raises(ValueError, match="missing field 'kind'"):
        Device.from_dict({"id": "x", "memory_bytes": 1, "compute_units": 1})


def test_detect_finds_this_cpu() -> None:
    devices = detect_devices(include_cuda=False)
    assert devices[0].id == "cpu" and devices[0].kind == "cpu"
    assert devices[0].compute_units >= 1 and devices[0].memory_bytes > 2**20


def test_detect_lists_cuda_devices_torch_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch with a stand-in torch (no GPU on this machine)."""
    import sys
    import types

    class Props:
        total_memory = 80 * 2**30

    cuda = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 2,
                                 get_device_properties=lambda index: Props())
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    devices = detect_devices()
    assert [d.id for d in devices] == ["cpu", "cuda:0", "cuda:1"]
    assert devices[1] == Device("cuda:0", "cuda", 80 * 2**30, 100.0)
