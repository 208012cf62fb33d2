"""Hashes read once per file, in sha256sum's manifest format, with a progress bar."""

from __future__ import annotations

import hashlib
import subprocess

import pytest

from airlock import ModelImportRefused, read_manifest
from airlock.file_hashes import hash_tree
from airlock.model_file_policy import model_files
from experiments import dir_sha256


def test_one_pass_gives_file_hashes_copy_and_folder_hash(tiny_model_dir, tmp_path, capsys):
    files = model_files(tiny_model_dir)
    hashes = hash_tree(tiny_model_dir, files, copy_to=tmp_path / "copy", progress=True, chunk_bytes=1 << 16)
    assert "sha256" in capsys.readouterr().err  # the progress bar, on stderr
    assert hashes.content_sha256 == dir_sha256(tiny_model_dir) == dir_sha256(tmp_path / "copy")
    for f in files:
        assert hashes.files[f.name] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert (tmp_path / "copy" / f.name).read_bytes() == f.read_bytes()


def test_manifest_reads_sha256sum_output_in_text_and_binary_mode(tiny_model_dir, tmp_path):
    for flag in ("-t", "-b"):
        out = subprocess.run(
            ["sha256sum", flag, "./config.json", "model.safetensors"],
            cwd=tiny_model_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (tmp_path / "SHA256SUMS").write_text(out)
        entries = read_manifest(tmp_path / "SHA256SUMS")
        assert set(entries) == {"config.json", "model.safetensors"}
        assert (
            entries["config.json"]
            == hashlib.sha256((tiny_model_dir / "config.json").read_bytes()).hexdigest()
        )


def test_malformed_manifest_line_is_refused(tmp_path):
    (tmp_path / "SHA256SUMS").write_text("a" * 64 + "  ok.json\nnot a hash  x.json\n")
    with pytest.raises(ModelImportRefused, match=r"SHA256SUMS:2: refused: not a sha256sum line"):
        read_manifest(tmp_path / "SHA256SUMS")
