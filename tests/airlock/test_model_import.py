"""A good model goes through the airlock into the store and the registry, and a
stored model that changes afterwards is refused at load and by `models verify`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from airlock import ModelNotInStoreError, import_model, store_root, verify_all_bytes, verify_store_copy
from experiments import ModelIntegrityError, dir_sha256, get_version, register_folder, resolve
from sekisho.cli import main


@pytest.fixture(scope="module")
def imported(sekisho_home, tiny_model_dir, tmp_path_factory):
    manifest = tmp_path_factory.mktemp("media") / "SHA256SUMS"
    manifest.write_text(
        subprocess.run(
            "sha256sum *", shell=True, cwd=tiny_model_dir, capture_output=True, text=True, check=True
        ).stdout
    )
    return import_model(tiny_model_dir, "tiny-base", manifest=manifest, progress=False)


def test_import_registers_a_base_version_with_every_hash(imported, tiny_model_dir):
    mv = get_version(f"tiny-base/{imported.version}")
    tags = mv.tags
    source_files = sorted(p for p in tiny_model_dir.iterdir())
    assert tags["kind"] == "base"
    assert tags["architecture"] == "LlamaForCausalLM"
    assert tags["content_sha256"] == dir_sha256(tiny_model_dir) == imported.content_sha256
    assert tags["file_count"] == str(len(source_files))
    listed = dict(reversed(line.split("  ")) for line in tags["files_sha256"].splitlines())
    for p in source_files:
        assert listed[p.name] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert mv.source == str(imported.path) == tags["store_path"]
    assert resolve(f"tiny-base/{imported.version}").sha256 == imported.content_sha256


def test_store_copy_is_content_addressed_and_read_only(imported):
    assert imported.path == store_root() / "sha256" / imported.content_sha256
    assert dir_sha256(imported.path) == imported.content_sha256
    for p in [imported.path, *imported.path.rglob("*")]:
        assert not os.access(p, os.W_OK) or os.geteuid() == 0
        assert p.stat().st_mode & 0o222 == 0, p
    assert list((store_root() / ".incoming").iterdir()) == []


def test_load_check_and_full_verify_pass_on_an_intact_copy(imported):
    stored = verify_store_copy(f"tiny-base/{imported.version}")
    assert stored.path == imported.path and stored.files == len(imported.hashes.files)
    assert verify_all_bytes(f"tiny-base/{imported.version}").content_sha256 == imported.content_sha256


def test_reimport_reuses_the_stored_copy(imported, tiny_model_dir):
    again = import_model(tiny_model_dir, "tiny-base", progress=False)
    assert again.path == imported.path and int(again.version) == int(imported.version) + 1


def test_version_not_in_store_is_refused_at_load(sekisho_home, tiny_model_dir):
    version = register_folder("tiny-registered-only", tiny_model_dir, kind="base")
    with pytest.raises(ModelNotInStoreError, match="not in the model store"):
        verify_store_copy(f"tiny-registered-only/{version}")


@pytest.fixture
def tampered_import(model_copy):
    """An import of its own (distinct content, so no other test shares the store copy)."""
    (model_copy / "notes.txt").write_text(f"copy for {model_copy}\n")
    m = import_model(model_copy, "tiny-tamper", progress=False)
    return m, f"tiny-tamper/{m.version}"


def _writable(path):
    path.parent.chmod(0o755)
    path.chmod(0o644)


def test_weight_byte_changed_after_import_is_refused(tampered_import):
    m, ref = tampered_import
    weights = m.path / "model.safetensors"
    _writable(weights)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    for check in (verify_store_copy, verify_all_bytes):
        with pytest.raises(ModelIntegrityError) as exc:
            check(ref)
        assert str(weights) in str(exc.value) and "changed" in str(exc.value)


def test_change_between_sampled_chunks_passes_load_check_but_not_full_verify(model_copy):
    notes = model_copy / "notes.txt"
    notes.write_bytes(b"a" * (5 << 20))  # big enough to be sampled, not read whole, at load
    m = import_model(model_copy, "tiny-sampled", progress=False)
    ref = f"tiny-sampled/{m.version}"
    stored_notes = m.path / "notes.txt"
    _writable(stored_notes)
    with stored_notes.open("r+b") as fh:
        fh.seek(int(1.1 * (1 << 20)))  # between the first and second sampled MiB
        fh.write(b"b")
    assert verify_store_copy(ref).path == m.path
    with pytest.raises(ModelIntegrityError) as exc:
        verify_all_bytes(ref)
    assert str(stored_notes) in str(exc.value) and "SHA-256 changed" in str(exc.value)


def test_added_file_and_edited_record_are_refused(tampered_import):
    m, ref = tampered_import
    m.path.chmod(0o755)
    extra = m.path / "pytorch_model.bin"
    extra.write_bytes(b"\x80\x04")
    with pytest.raises(ModelIntegrityError, match="pytorch_model.bin: added"):
        verify_store_copy(ref)
    extra.unlink()
    record = store_root() / "records" / f"{m.content_sha256}.json"
    record.chmod(0o644)
    edited = json.loads(record.read_text())
    edited["files"]["notes.txt"]["size"] += 1
    record.write_text(json.dumps(edited))
    with pytest.raises(ModelIntegrityError, match="import record .* was changed"):
        verify_store_copy(ref)


def test_cli_import_and_verify(model_copy, sekisho_home, capsys):
    (model_copy / "notes.txt").write_text("cli copy\n")
    assert main(["models", "import", str(model_copy), "--name", "tiny-cli"]) == 0
    assert "imported tiny-cli version 1 (LlamaForCausalLM)" in capsys.readouterr().out
    assert main(["models", "verify", "tiny-cli"]) == 0
    assert "tiny-cli/1: OK" in (out := capsys.readouterr().out) and "store record from import" in out
    weights = store_root() / "sha256" / get_version("tiny-cli/1").tags["content_sha256"] / "config.json"
    _writable(weights)
    weights.write_text(weights.read_text().replace("128", "129", 1))
    assert main(["models", "verify", "tiny-cli/1"]) == 2
    err = capsys.readouterr().err
    assert "sekisho: error: " in err and str(weights) in err
    (model_copy / "model.bin").write_bytes(b"\x80\x04.")
    assert main(["models", "import", str(model_copy), "--name", "tiny-cli"]) == 2
    assert "model.bin: refused: .bin is a pickle format" in capsys.readouterr().err
