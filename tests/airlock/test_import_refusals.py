"""Bad input at the airlock: each crafted model is refused with a message naming
the file and the reason, and leaves nothing registered, stored or executed."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess

import pytest

from airlock import ImportPolicy, ModelImportRefused, import_model


class _CreatesFile:
    """Unpickling this calls open(path, "w"): a stand-in for any code a pickle runs."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def refused(src, name, *needles, **kwargs) -> str:
    with pytest.raises(ModelImportRefused) as exc:
        import_model(src, name, progress=False, **kwargs)
    message = str(exc.value)
    for needle in needles:
        assert needle in message, message
    return message


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_pickle_payload_is_refused_and_never_loaded(model_copy, tmp_path, nothing_left):
    control, marker = tmp_path / "control-created", tmp_path / "import-created"
    pickle.loads(pickle.dumps(_CreatesFile(control)))
    assert control.exists(), "the payload is live: loading it creates a file"
    (model_copy / "pytorch_model.bin").write_bytes(pickle.dumps(_CreatesFile(marker)))

    refused(model_copy, "bad-pickle", str(model_copy / "pytorch_model.bin"), "pickle format")
    assert not marker.exists()
    nothing_left("bad-pickle")


def test_pickle_under_a_harmless_name_is_refused(model_copy, tmp_path, nothing_left):
    marker = tmp_path / "import-created"
    (model_copy / "special_tokens.txt").write_bytes(pickle.dumps(_CreatesFile(marker), protocol=4))
    refused(model_copy, "bad-disguised", "special_tokens.txt", "pickle stream under another name")
    assert not marker.exists()
    nothing_left("bad-disguised")


def test_code_file_is_refused_and_never_imported(model_copy, tmp_path, nothing_left):
    marker = tmp_path / "code-ran"
    (model_copy / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    refused(model_copy, "bad-code", str(model_copy / "modeling_evil.py"), "files are code")
    assert not marker.exists()
    nothing_left("bad-code")


@pytest.mark.parametrize(
    "file, key, value",
    [
        ("config.json", "auto_map", {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}),
        ("tokenizer_config.json", "auto_map", {"AutoTokenizer": ["tok_evil.EvilTokenizer", None]}),
        ("config.json", "trust_remote_code", True),
    ],
)
def test_remote_code_setting_is_refused(model_copy, nothing_left, file, key, value):
    edit_json(model_copy / file, **{key: value})
    refused(model_copy, "bad-remote-code", str(model_copy / file), f"{key} asks for remote code")
    nothing_left("bad-remote-code")


def test_nested_auto_map_is_refused(model_copy, nothing_left):
    edit_json(model_copy / "config.json", text_config={"auto_map": {"AutoConfig": "x.Y"}})
    refused(model_copy, "bad-nested", "config.json", "text_config.auto_map asks for remote code")
    nothing_left("bad-nested")


def test_lying_safetensors_header_is_refused(model_copy, nothing_left):
    path = model_copy / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [4096, 4096]  # far more bytes than its offsets hold
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    refused(model_copy, "bad-header", str(path), f"tensor {name!r} claims F32[4096, 4096]")
    nothing_left("bad-header")


def test_oversized_chat_template_is_refused(model_copy, nothing_left):
    (model_copy / "chat_template.jinja").write_text("{{ messages[0]['content'] }}" + " " * 70_000)
    refused(
        model_copy, "bad-template-size", str(model_copy / "chat_template.jinja"), "over the 65536-byte limit"
    )
    nothing_left("bad-template-size")


@pytest.mark.parametrize(
    "template, reason",
    [
        ("{{ raise_exception('roles must alternate') }}", "TemplateError: roles must alternate"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError"),
        ("{{ 'x' * 4000000000 }}", "memory limit"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "did not finish within 2 s",
        ),
    ],
)
def test_failing_or_looping_chat_template_is_refused(model_copy, nothing_left, template, reason):
    (model_copy / "chat_template.jinja").write_text(template)
    refused(
        model_copy,
        "bad-template",
        str(model_copy / "chat_template.jinja"),
        reason,
        policy=ImportPolicy(chat_template_timeout_s=2),
    )
    nothing_left("bad-template")


def test_template_inside_tokenizer_config_is_checked(model_copy, nothing_left):
    edit_json(model_copy / "tokenizer_config.json", chat_template="{{ undefined_fn() }}")
    refused(model_copy, "bad-template-cfg", str(model_copy / "tokenizer_config.json"), "render")
    nothing_left("bad-template-cfg")


def sha256sums(folder):
    out = subprocess.run(
        ["sha256sum", *sorted(p.name for p in folder.iterdir())],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    manifest = folder.parent / "SHA256SUMS"
    manifest.write_text(out)
    return manifest


def test_hash_mismatch_against_manifest_is_refused(model_copy, nothing_left):
    manifest = sha256sums(model_copy)
    with (model_copy / "config.json").open("a") as fh:
        fh.write(" ")  # one byte changed on the way
    refused(
        model_copy,
        "bad-hash",
        str(model_copy / "config.json"),
        "does not match",
        str(manifest),
        manifest=manifest,
    )
    nothing_left("bad-hash")


def test_file_missing_from_manifest_is_refused(model_copy, nothing_left):
    manifest = sha256sums(model_copy)
    (model_copy / "extra.txt").write_text("slipped in")
    refused(
        model_copy,
        "bad-unlisted",
        str(model_copy / "extra.txt"),
        "not listed in the manifest",
        manifest=manifest,
    )
    nothing_left("bad-unlisted")


def test_missing_tokenizer_is_refused(model_copy, nothing_left):
    (model_copy / "tokenizer.json").unlink()
    refused(model_copy, "bad-no-tokenizer", str(model_copy), "no tokenizer")
    nothing_left("bad-no-tokenizer")


def test_architecture_vllm_lacks_is_refused(model_copy, nothing_left):
    edit_json(model_copy / "config.json", architectures=["EvilForCausalLM"])
    refused(model_copy, "bad-arch", str(model_copy / "config.json"), "'EvilForCausalLM' is not one")
    nothing_left("bad-arch")


def test_unknown_file_type_and_symlink_are_refused(model_copy, tmp_path, nothing_left):
    (model_copy / "weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    refused(model_copy, "bad-type", "weights.h5", "not an accepted model file type")
    (model_copy / "weights.h5").unlink()
    (model_copy / "link.json").symlink_to(tmp_path / "outside.json")
    refused(model_copy, "bad-type", "link.json", "symbolic links")
    nothing_left("bad-type")


def test_pipe_and_deeply_nested_json_are_refused(model_copy, nothing_left):
    import os

    os.mkfifo(model_copy / "stream")
    refused(model_copy, "bad-special", "stream", "not a regular file")
    (model_copy / "stream").unlink()
    (model_copy / "generation_config.json").write_text("[" * 200_000 + "]" * 200_000)
    refused(model_copy, "bad-special", "generation_config.json", "not valid JSON")
    nothing_left("bad-special")


def test_file_listed_in_manifest_but_absent_is_refused(model_copy, nothing_left):
    manifest = sha256sums(model_copy)
    (model_copy / "generation_config.json").unlink()
    refused(
        model_copy,
        "bad-missing",
        "generation_config.json",
        "listed in the manifest",
        "but not in the folder",
        manifest=manifest,
    )
    nothing_left("bad-missing")


@pytest.mark.parametrize(
    "shard, reason",
    [
        ("../outside/model.safetensors", "not a safetensors file in the folder"),
        ("model.safetensors", "is not in model.safetensors"),
    ],
)
def test_index_naming_files_outside_or_absent_tensors_is_refused(model_copy, nothing_left, shard, reason):
    index = model_copy / "model.safetensors.index.json"
    index.write_text(
        json.dumps(
            {"metadata": {}, "weight_map": {"lm_head.weight": "model.safetensors", "evil.weight": shard}}
        )
    )
    refused(model_copy, "bad-index", str(index), reason)
    nothing_left("bad-index")
