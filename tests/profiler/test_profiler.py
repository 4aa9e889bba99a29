"""The profiler: entries per setting, the profile format, the cache, and CLI errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from enserve.cli import main
from enserve.errors import ProfileError
from enserve.formats.profile import Profile, load_profile, profile_from_dict
from enserve.profiler import default_cpu_shares, profile_spec, profile_spec_dict

FAST = {"batch_sizes": (1, 2), "shares": [1], "repeats": 2, "warmup": 1, "progress": False,
        "fusion": "off"}


def test_profile_has_an_entry_per_setting_and_validates(
    tiny_spec_path: Path, tmp_path: Path, change_weights: Callable[[int], None]
) -> None:
    cache = tmp_path / "cache"
    data, stats = profile_spec_dict(tiny_spec_path, variants=["eager", "onnx"], cache_dir=cache,
                                    **FAST)  # type: ignore[arg-type]
    profile = profile_from_dict(json.loads(json.dumps(data)))
    assert [d.id for d in profile.devices] == ["cpu"]
    assert profile.member_names() == ["tiny", "other"]
    keys = {(e.member, e.variant, e.batch_size, e.share) for e in profile.entries}
    assert keys == {(m, v, b, 1.0) for m in ("tiny", "other") for v in ("eager", "onnx")
                    for b in (1, 2)}
    for entry in profile.entries:
        assert entry.latency_s > 0
        assert entry.memory_bytes >= (entry.model_extra or {})["weights_bytes"] > 0
    assert all(c["admitted"] for m in data["members"] for c in m["checks"])
    assert stats.measured_entries == 8 and stats.cached_entries == 0

    # A second run is answered from the cache without starting any process.
    import enserve.profiler.run as run_module

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("a child process was started")

    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(run_module, "run_task", no_process)
        again, stats = profile_spec_dict(tiny_spec_path, variants=["eager", "onnx"],
                                         cache_dir=cache, **FAST)  # type: ignore[arg-type]
    assert stats.measured_entries == 0 and stats.run_checks == 0
    assert again["entries"] == data["entries"]

    # New weights invalidate only that member's entries.
    change_weights(77)
    _, stats = profile_spec_dict(tiny_spec_path, variants=["eager", "onnx"], cache_dir=cache,
                                 **FAST)  # type: ignore[arg-type]
    assert stats.measured_entries == 4 and stats.cached_entries == 4
    assert stats.run_checks == 2


def test_profile_spec_returns_profile_and_skips_unrunnable_variant(
    tiny_spec_path: Path, tmp_path: Path
) -> None:
    profile = profile_spec(tiny_spec_path, variants=["eager"], cache_dir=tmp_path, batch_sizes=(1,),
                           shares=[1], repeats=1, warmup=0, progress=False, fusion="off")
    assert isinstance(profile, Profile)
    assert len(profile.entries) == 2
    assert {e.variant for e in profile.entries} == {"eager"}
    _, stats = profile_spec_dict(tiny_spec_path, variants=["eager"], cache_dir=tmp_path,
                                 batch_sizes=(1,), shares=[1], repeats=1, warmup=0,
                                 progress=False, refresh=True, fusion="off")
    assert stats.measured_entries == 2 and stats.cached_entries == 0


def test_cli_writes_a_loadable_profile(tiny_spec_path: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profile.json"
    code = main(["profile", str(tiny_spec_path), "--variants", "eager", "--batch-sizes", "1",
                 "--shares", "1", "--repeats", "1", "--warmup", "0", "--no-progress",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--fusion", "off"])
    assert code == 0
    profile = load_profile(out)
    assert {e.member for e in profile.entries} == {"tiny", "other"}
    assert "2 entries" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-sizes", "1,x"], "--batch-sizes: 'x' is not a positive whole number"),
        (["--batch-sizes", "0"], "--batch-sizes: '0'"),
        (["--variants", "eager,fast"], "--variants: 'fast' is not a variant"),
        (["--shares", "1,999"], "--shares: 999 is not a whole number of cores"),
        (["--shares", "two"], "--shares: 'two'"),
        (["--devices", "cuda:7"], "--devices: 'cuda:7' is not a device on this machine"),
        (["--gpu-shares", "-5"], "--gpu-shares: '-5' is not a percentage"),
        (["--repeats", "0"], "--repeats: 0 must be at least 1"),
    ],
)
def test_bad_flags_fail_with_a_clear_message(
    tiny_spec_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    flags: list[str], message: str
) -> None:
    code = main(["profile", str(tiny_spec_path), "--no-progress", "--cache-dir",
                 str(tmp_path), "--out", str(tmp_path / "p.json"), *flags])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_missing_spec_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "p.json")]) == 2
    assert "spec file not found" in capsys.readouterr().err


def test_variant_no_member_can_run_is_an_error(tiny_spec_path: Path, tmp_path: Path) -> None:
    spec_dir = tiny_spec_path.parent
    (spec_dir / "o.yaml").write_text(
        "name: o\ninputs: [{name: input, shape: [-1, 3, 12, 12]}]\n"
        "members: [{name: o, source: 'onnx:missing.onnx'}]\n"
    )
    with pytest.raises(ProfileError, match="member 'o' can run none of eager; it can run onnx"):
        profile_spec_dict(spec_dir / "o.yaml", variants=["eager"], cache_dir=tmp_path,
                          **FAST)  # type: ignore[arg-type]


def test_default_cpu_shares() -> None:
    assert default_cpu_shares(1) == [1.0]
    assert default_cpu_shares(2) == [1.0, 2.0]
    assert default_cpu_shares(12) == [1.0, 2.0, 4.0, 8.0, 12.0]


def test_profile_errors_are_profile_errors(tiny_spec_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="--variants: unknown variant 'turbo'"):
        profile_spec_dict(tiny_spec_path, variants=["turbo"], cache_dir=tmp_path)
