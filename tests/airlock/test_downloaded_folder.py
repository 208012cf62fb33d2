"""A model folder as `hf download --local-dir` leaves it: the download's metadata
(`.cache/huggingface/`), documents (README, LICENSE, `.gitattributes`) and, for
Llama, an `original/` folder of pickled `.pth` checkpoints beside the safetensors.
Refused without `--exclude 'original/*'`, naming every refused file; imported with
it, documents kept with the import's run and out of the store, the alias set."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest

from airlock import ModelImportRefused, import_model
from sekisho.cli import main


@pytest.fixture
def downloaded(tmp_path, tiny_model_dir):
    root = shutil.copytree(tiny_model_dir, tmp_path / "Llama-tiny-Instruct")
    meta = root / ".cache" / "huggingface"
    (meta / "download" / "original").mkdir(parents=True)
    (meta / ".gitignore").write_text("*\n")
    for name in ("model.safetensors", "config.json", "original/consolidated.00.pth"):
        (meta / "download" / f"{name}.metadata").write_text("0123abcd\netag\n1733400000.0\n")
    (meta / "download" / "model.safetensors.lock").write_text("")
    (root / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (root / "README.md").write_text("# Llama tiny\nA model card.\n")
    (root / "LICENSE").write_text("LLAMA COMMUNITY LICENSE (test copy)\n")
    original = root / "original"
    original.mkdir()
    (original / "consolidated.00.pth").write_bytes(pickle.dumps({"weights": [0.0] * 8}))
    (original / "consolidated.01.pth").write_bytes(pickle.dumps({"weights": [1.0] * 8}))
    (original / "params.json").write_text('{"dim": 128}')
    return root


def test_refused_without_exclude_naming_every_refused_file(downloaded, nothing_left):
    with pytest.raises(ModelImportRefused) as exc:
        import_model(downloaded, "dl-refused", progress=False)
    message = str(exc.value)
    assert "2 file(s) may not enter the store" in message
    for name in ("consolidated.00.pth", "consolidated.01.pth"):
        assert f"{downloaded / 'original' / name}: refused: .pth is a pickle format" in message
    assert "--exclude 'original/*'" in message
    assert ".cache" not in message and "README" not in message
    nothing_left("dl-refused")


def test_imported_with_exclude_and_alias_through_the_cli(downloaded, sekisho_home, capsys):
    from mlflow import MlflowClient

    from experiments import get_version

    assert (
        main(
            [
                "models",
                "import",
                str(downloaded),
                "--name",
                "dl-tiny",
                "--exclude",
                "original/*",
                "--alias",
                "production",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "left out: .cache/huggingface/ (the download's own metadata (hf download))" in out
    assert "left out: original/consolidated.00.pth (--exclude original/*)" in out
    assert "documents kept with the import run, not in the store: .gitattributes, LICENSE, README.md" in out
    mv = get_version("dl-tiny@production")
    assert f"dl-tiny@production -> version {mv.version}" in out
    stored = {
        p.relative_to(mv.tags["store_path"]).as_posix()
        for p in __import__("pathlib").Path(mv.tags["store_path"]).rglob("*")
        if p.is_file()
    }
    assert stored == {p.name for p in downloaded.iterdir() if p.is_file()} - {
        ".gitattributes",
        "README.md",
        "LICENSE",
    }
    docs = {os.path.basename(a.path) for a in MlflowClient().list_artifacts(mv.run_id, "import/documents")}
    assert docs == {".gitattributes", "LICENSE", "README.md"}
    assert main(["models", "verify", "dl-tiny@production"]) == 0
