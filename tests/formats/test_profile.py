from __future__ import annotations

import json
from pathlib import Path

import pytest

from enserve.errors import ProfileError
from enserve.formats.profile import load_profile, save_profile

MINIMAL = {
    "devices": [{"id": "cuda:0", "kind": "cuda", "memory_bytes": 17179869184,
                 "compute_units": 100}],
    "members": [{"name": "resnet50"}],
    "entries": [{"member": "resnet50", "device": "cuda:0", "batch_size": 8, "share": 100,
                 "latency_s": 0.012, "memory_bytes": 350000000}],
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return path


def test_minimal_form_from_the_issue(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, MINIMAL))
    assert profile.device_list()[0].memory_bytes == 17179869184
    assert profile.entries[0].variant is None and profile.combine_s == 0


def test_extra_keys_survive_a_round_trip(tmp_path: Path) -> None:
    data = json.loads(json.dumps(MINIMAL))
    data["meta"] = {"host": "x"}
    data["devices"][0]["name"] = "V100"
    data["members"][0].update(param_bytes=102_000_000, sha="abc")
    data["entries"][0].update(variant="onnx", p90_s=0.013)
    profile = load_profile(write(tmp_path, data))
    out = tmp_path / "again.json"
    save_profile(profile, out)
    again = json.loads(out.read_text())
    assert again["meta"] == {"host": "x"}
    assert again["devices"][0]["name"] == "V100"
    assert again["devices"][0]["compute_units"] == 100  # written as an int
    assert again["members"][0]["sha"] == "abc"
    assert again["entries"][0]["p90_s"] == 0.013 and again["entries"][0]["variant"] == "onnx"
    assert load_profile(out) == profile


@pytest.mark.parametrize("change, field", [
    (lambda d: d["entries"][0].pop("latency_s"), "entries.0.latency_s"),
    (lambda d: d["entries"][0].update(latency_s=-1), "entries.0.latency_s"),
    (lambda d: d["entries"][0].update(member="vgg"), "entries.0.member"),
    (lambda d: d["entries"][0].update(device="cuda:9"), "entries.0.device"),
    (lambda d: d["entries"][0].update(share=150), "entries.0.share"),
    (lambda d: d["devices"][0].update(kind="tpu"), "devices.0.kind"),
    (lambda d: d["members"].append({"name": "resnet50"}), "members"),
    (lambda d: d["entries"].append(dict(d["entries"][0])), "entries.1"),
])
def test_errors_name_file_and_field(tmp_path: Path, change: object, field: str) -> None:
    data = json.loads(json.dumps(MINIMAL))
    change(data)  # type: ignore[operator]
    path = write(tmp_path, data)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="top level"):
        load_profile(write(tmp_path, [1, 2]))


def test_format_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, enserve.formats.profile, enserve.plan, enserve.devices; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
