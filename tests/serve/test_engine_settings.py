"""Engine settings reach vLLM as vLLM reads them: each setting's flag on the
command line (parsed back by vLLM's own parser), the model's generation config by
default, extra vLLM flags checked before deploy, and the tool-call parser picked
from each model family's real chat template."""

import json
import logging
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from foundation import ConfigError
from serve import ServeAppConfig
from serve.config import KV_CACHE_DTYPES, LORA_RANKS, QUANTIZATIONS, EngineSettings
from serve.engine_args import reasoning_parser_names, tool_parser_names, vllm_parser
from serve.reasoning_parsers import detect_reasoning_parser, resolve_reasoning_parser
from serve.tool_parsers import detect_tool_call_parser, resolve_tool_call_parser
from serve.vllm_process import engine_env, vllm_command
from train.tiny_families import build_family_model, load_family

FAMILIES = Path(__file__).resolve().parents[1] / "fixtures" / "families"


def command(engine: EngineSettings, model_dir="/m", adapters=None, task="generate") -> list[str]:
    return vllm_command(
        str(model_dir), "m", adapters or {}, {**engine.model_dump(), "task": task}, "127.0.0.1", 8123
    )


def parsed(cmd: list[str]):
    """The command as vLLM's api_server reads it (past `python -m MODULE`)."""
    assert cmd[1:3] == ["-m", "serve.vllm_main"]  # vLLM's api_server, run as its `-m` runs it
    return vllm_parser().parse_args(cmd[3:])


@pytest.fixture(scope="module")
def corpus(sample_conversations):
    return [m["content"] for conv in sample_conversations for m in conv]


@pytest.fixture(scope="module")
def family_model(tmp_path_factory, corpus):
    """A tiny model of a family (tests/fixtures/families/NAME.yaml), built once per module."""
    built: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in built:
            out = tmp_path_factory.mktemp(name)
            built[name] = build_family_model(FAMILIES / f"{name}.yaml", out / name, corpus)
        return built[name]

    return build


def test_defaults_leave_vllm_its_own_and_take_the_model_generation_config(tmp_path):
    cmd = command(EngineSettings(), model_dir=tmp_path)
    args = parsed(cmd)
    assert args.generation_config == "auto"  # the model's generation_config.json, not vLLM's neutral one
    for flag in (
        "--gpu-memory-utilization",
        "--quantization",
        "--kv-cache-dtype",
        "--max-num-batched-tokens",
        "--enable-prefix-caching",
        "--no-enable-prefix-caching",
        "--pipeline-parallel-size",
        "--tool-call-parser",  # a folder without a chat template: no tools
    ):
        assert flag not in cmd
    assert parsed(command(EngineSettings(generation_config="vllm"))).generation_config == "vllm"


def test_each_setting_reaches_vllm_as_it_reads_it():
    engine = EngineSettings(
        gpu_memory_utilization=0.85,
        quantization="awq",
        kv_cache_dtype="fp8_e5m2",
        max_num_batched_tokens=8192,
        enable_prefix_caching=False,
        pipeline_parallel_size=2,
        tensor_parallel_size=4,
        tool_call_parser="hermes",
        enforce_eager=True,
        max_lora_rank=64,
        extra_args=["--max-logprobs", "7", "--enable-chunked-prefill"],
    )
    args = parsed(command(engine, adapters={"a": "/adapters/a"}))
    assert (args.gpu_memory_utilization, args.quantization, args.kv_cache_dtype) == (0.85, "awq", "fp8_e5m2")
    assert (args.max_num_batched_tokens, args.enable_prefix_caching) == (8192, False)
    assert (args.pipeline_parallel_size, args.tensor_parallel_size) == (2, 4)
    assert (args.tool_call_parser, args.enable_auto_tool_choice, args.enforce_eager) == ("hermes", True, True)
    assert (args.max_lora_rank, args.max_logprobs, args.enable_chunked_prefill) == (64, 7, True)
    assert parsed(command(EngineSettings(enable_prefix_caching=True))).enable_prefix_caching is True


def test_vllm_takes_the_model_sampling_defaults_and_its_turn_end_stop_ids(family_model):
    """What vLLM makes of our command for a Llama-3.1-family model: its recommended
    sampling by default (none with generation_config: vllm), and <|eot_id|> among the
    ids it stops at either way."""
    from transformers import AutoTokenizer
    from vllm.engine.arg_utils import EngineArgs

    model = family_model("llama-3.1")
    eot = AutoTokenizer.from_pretrained(model).convert_tokens_to_ids("<|eot_id|>")
    for setting, sampling in (("model", {"temperature": 0.6, "top_p": 0.9}), ("vllm", {})):
        args = parsed(command(EngineSettings(generation_config=setting), model_dir=model))
        config = EngineArgs.from_cli_args(args).create_model_config()
        assert config.get_diff_sampling_param() == sampling
        assert eot in config.try_get_generation_config()["eos_token_id"]


def _serve_yaml(folder: Path, engine_yaml: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "app.yaml"
    p.write_text(f"name: app\nmodels:\n  - name: m\n    source: /models/m\n    engine:\n{engine_yaml}")
    return p


def test_an_unknown_vllm_flag_is_refused_at_config_load_naming_the_field(tmp_path):
    p = _serve_yaml(
        tmp_path, "      max_model_len: 256\n      extra_args: ['--max-logprobs', '5', '--foo-bar', '1']\n"
    )
    with pytest.raises(ConfigError) as e:
        ServeAppConfig.from_yaml(p)
    assert f"{p}:7: models.0.engine.extra_args:" in str(e.value)
    assert "unknown vLLM flag '--foo-bar'" in str(e.value)


def test_a_value_vllm_refuses_is_refused_at_config_load(tmp_path):
    from sekisho.cli import main

    p = _serve_yaml(tmp_path, "      extra_args: ['--max-logprobs', 'many']\n")
    with pytest.raises(ConfigError) as e:
        ServeAppConfig.from_yaml(p)
    assert "models.0.engine.extra_args:" in str(e.value) and "'many'" in str(e.value)
    ok = _serve_yaml(
        tmp_path / "configs" / "serve", "      extra_args: ['--max-logprobs=5', '--seed', '2']\n"
    )
    assert main(["config", "check", str(ok)]) == 0  # `sekisho config check`; `serve up` loads the same way


@pytest.mark.parametrize(
    "extra, use",
    [
        (["--port", "9000"], "the app's own port is `port`"),
        (["--host=0.0.0.0"], "the app's own address is `host`"),
        (["--api-key", "k"], "only the gateway holds it"),
        (["--middleware", "my.Middleware"], "Sekisho mounts its gateway"),
        (["--model", "/other"], "models[].source"),
        (["--max_model_len", "4096"], "engine.max_model_len"),
        (["-tp", "2"], "engine.tensor_parallel_size"),
        (["--no-enable-prefix-caching"], "engine.enable_prefix_caching"),
        (["--generation-config", "vllm"], "engine.generation_config"),
        (["--tool-call-parser", "hermes"], "engine.tool_call_parser"),
        (["--config", "more.yaml"], "a --config file would bypass this check"),
    ],
)
def test_a_flag_sekisho_sets_itself_is_refused_naming_the_setting(extra, use):
    with pytest.raises(ValidationError) as e:
        ServeAppConfig.model_validate(
            {"name": "app", "models": [{"name": "m", "source": "/m", "engine": {"extra_args": extra}}]}
        )
    (err,) = e.value.errors()
    assert err["loc"] == ("models", 0, "engine", "extra_args")
    assert "is set by Sekisho: use" in err["msg"] and use in err["msg"]


def test_a_stray_value_and_an_abbreviated_flag_are_refused():
    with pytest.raises(ValidationError, match="'8' is not a flag or a flag's value"):
        EngineSettings(extra_args=["--enable-chunked-prefill", "8"])
    with pytest.raises(ValidationError, match="unknown vLLM flag '--max-logprob'"):
        EngineSettings(extra_args=["--max-logprob", "5"])


def test_typed_settings_refuse_what_vllm_would_refuse():
    for bad in (
        {"gpu_memory_utilization": 0},
        {"gpu_memory_utilization": 1.2},
        {"quantization": "bitsandbytes4"},
        {"kv_cache_dtype": "fp4"},
        {"max_num_batched_tokens": 0},
        {"max_lora_rank": 4},
        {"tool_call_parser": "hermess"},
    ):
        with pytest.raises(ValidationError) as e:
            EngineSettings(**bad)
        assert e.value.errors()[0]["loc"] == tuple(bad)
    assert "hermes, hf" in str(pytest.raises(ValidationError, EngineSettings, tool_call_parser="x").value)
    EngineSettings(tool_call_parser="mine", extra_args=["--tool-parser-plugin", "/plugins/mine.py"])


def test_the_typed_choices_are_vllms():
    from typing import get_args

    from vllm.config.cache import CacheDType
    from vllm.model_executor.layers.quantization import DEPRECATED_QUANTIZATION_METHODS, QUANTIZATION_METHODS
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    assert set(QUANTIZATIONS) == set(QUANTIZATION_METHODS) - set(DEPRECATED_QUANTIZATION_METHODS)
    assert set(KV_CACHE_DTYPES) == set(get_args(CacheDType))
    assert tuple(vllm_parser()._option_string_actions["--max-lora-rank"].choices) == LORA_RANKS
    assert tool_parser_names() == ToolParserManager.list_registered()
    assert reasoning_parser_names() == ReasoningParserManager.list_registered()


@pytest.mark.parametrize("family", sorted(p.stem for p in FAMILIES.glob("*.yaml")))
def test_the_tool_call_parser_is_detected_from_each_family_real_template(family, family_model, tmp_path):
    spec, facts = load_family(FAMILIES / f"{family}.yaml")
    model = family_model(family)  # the template in chat_template.jinja, as transformers saves it
    assert detect_tool_call_parser(model)[0] == spec.tool_call_parser
    assert resolve_tool_call_parser("auto", model) == spec.tool_call_parser
    # The same template where hub folders keep it: tokenizer_config.json's chat_template.
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text((model / "config.json").read_text())
    (hub / "tokenizer_config.json").write_text(json.dumps({"chat_template": facts["chat_template"]}))
    assert detect_tool_call_parser(hub)[0] == spec.tool_call_parser
    # The reasoning parser alike: Qwen3's <think> blocks; none for the others (gpt-oss's
    # harmony channels vLLM parses itself).
    assert detect_reasoning_parser(model)[0] == spec.reasoning_parser
    assert detect_reasoning_parser(hub)[0] == spec.reasoning_parser


def test_the_reasoning_parser_is_resolved_at_engine_start_an_explicit_one_wins(tmp_path, caplog):
    facts = json.loads((FAMILIES.parent / "chat_templates" / "qwen3.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": facts["chat_template"]}))
    with caplog.at_level(logging.INFO, logger="sekisho.serve"):
        assert parsed(command(EngineSettings(), model_dir=tmp_path)).reasoning_parser == "qwen3"
    assert f"reasoning parser qwen3 for {tmp_path}: the chat template writes Qwen3's" in caplog.text
    explicit = EngineSettings(reasoning_parser="deepseek_r1")
    assert parsed(command(explicit, model_dir=tmp_path)).reasoning_parser == "deepseek_r1"
    r1 = tmp_path / "r1-distill"
    r1.mkdir()
    (r1 / "chat_template.jinja").write_text(
        "{{ messages }}{% if add_generation_prompt %}<think>\n{% endif %}"
    )
    assert resolve_reasoning_parser("auto", r1) == "deepseek_r1"
    for off in (None, "none"):
        assert "--reasoning-parser" not in command(EngineSettings(reasoning_parser=off), model_dir=tmp_path)
    assert "--reasoning-parser" not in command(EngineSettings(), model_dir=tmp_path, task="embed")
    with pytest.raises(ValidationError, match="'qwen4' is not one of vLLM's reasoning parsers"):
        EngineSettings(reasoning_parser="qwen4")


def test_auto_is_resolved_at_engine_start_and_logged_an_explicit_parser_wins(tmp_path, caplog):
    facts = json.loads((FAMILIES.parent / "chat_templates" / "qwen2.5-instruct.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": facts["chat_template"]}))
    with caplog.at_level(logging.INFO, logger="sekisho.serve"):
        assert parsed(command(EngineSettings(), model_dir=tmp_path)).tool_call_parser == "hermes"
    assert f"tool-call parser hermes for {tmp_path}: the chat template writes tool calls" in caplog.text
    assert parsed(
        command(EngineSettings(tool_call_parser="pythonic"), model_dir=tmp_path)
    ).tool_call_parser == ("pythonic")
    unknown = tmp_path / "unknown-format"
    unknown.mkdir()
    (unknown / "chat_template.jinja").write_text(
        "{% if tools %}{{ tools | tojson }}{% endif %}{{ messages }}"
    )
    caplog.clear()
    assert resolve_tool_call_parser("auto", unknown) is None
    (record,) = [r for r in caplog.records if r.name == "sekisho.serve"]
    assert record.levelno == logging.WARNING and "set engine.tool_call_parser" in record.getMessage()
    for off in (None, "none"):
        assert "--tool-call-parser" not in command(EngineSettings(tool_call_parser=off), model_dir=tmp_path)
    assert "--tool-call-parser" not in command(EngineSettings(), model_dir=tmp_path, task="embed")


def test_a_served_model_stops_at_its_turn_end_token(tmp_path, family_model):
    """A Phi-3.5-family model, whose turn-end <|end|> is not the tokenizer's EOS
    (<|endoftext|>): started with Sekisho's command and default settings, the engine
    stops at <|end|> because the model's generation_config lists it. The bias makes
    <|end|> the model's every choice; were it not a stop token, the reply would be
    <|end|> repeated up to max_tokens."""
    from transformers import AutoTokenizer

    model = family_model("phi-3.5")
    end = AutoTokenizer.from_pretrained(model).convert_tokens_to_ids("<|end|>")
    engine = EngineSettings(max_model_len=256, max_num_seqs=2, dtype="float32", enforce_eager=True)
    port = _free_port()
    cmd = vllm_command(str(model), "phi", {}, {**engine.model_dump(), "task": "generate"}, "127.0.0.1", port)
    log = (tmp_path / "vllm.log").open("wb")
    env = {
        **os.environ,
        **engine_env(engine.model_dump()),
        "VLLM_API_KEY": "engine-key",
    }  # serve.engine_guard
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}", tmp_path / "vllm.log")
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": "phi",
                "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 8,
                "logit_bias": {str(end): 100},
                "skip_special_tokens": False,
            },
            headers={"Authorization": "Bearer engine-key"},
            timeout=120,
        )
        r.raise_for_status()
        (choice,) = r.json()["choices"]
        assert choice["finish_reason"] == "stop" and choice["stop_reason"] == end
        assert "<|end|>" not in choice["message"]["content"]
        _assert_engine_core_forked(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)


def _assert_engine_core_forked(server_pid: int) -> None:
    """A one-worker CPU engine's core is a fork of the server (serve.vllm_main), not a
    fresh interpreter that imports vLLM again: it still shares the server's memory
    from before the fork (the imported modules: copy-on-write pages both map), where a
    spawned one shares only files both have mapped."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    assert len(children) == 1, f"the server should have started one engine core: {children}"
    rollup = Path(f"/proc/{children[0]}/smaps_rollup").read_text()
    shared_dirty_kb = int(rollup.split("Shared_Dirty:")[1].split()[0])
    # Measured: 266 MB forked, 0 spawned (which also starts a resource tracker).
    assert shared_dirty_kb > 100_000, f"the engine core shares no memory with the server:\n{rollup}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"vLLM exited while starting:\n{log.read_text(errors='replace')[-3000:]}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"vLLM did not become healthy:\n{log.read_text(errors='replace')[-3000:]}")


def test_a_one_worker_cpu_engine_runs_its_worker_in_the_engine_core_a_parallel_one_does_not():
    """vLLM's CPU build (what these tests run) gets its KV cache size, and an engine of
    one worker the single-process executor (serve.vllm_process.engine_env); an engine
    split over workers keeps vLLM's multiprocess executor."""
    from serve.vllm_process import cpu_build

    assert cpu_build()
    one = EngineSettings(kv_cache_gb=3).model_dump()
    assert engine_env(one) == {
        "VLLM_CPU_KVCACHE_SPACE": "3",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "SEKISHO_ENGINE_CORE_START": "fork",  # serve.vllm_main
    }
    for split in ({"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}):
        assert engine_env({**one, **split}) == {"VLLM_CPU_KVCACHE_SPACE": "3"}


def test_an_engine_process_takes_its_niceness_and_dies_with_its_replica(tmp_path):
    """The settings an engine's process takes itself after exec (no Python between
    fork and exec): the replica's niceness, and death with the replica even when the
    replica is SIGKILLed."""
    import signal
    import sys

    engine = (
        "from serve.vllm_main import adopt_engine_settings; adopt_engine_settings(); "
        "import os, time; print(os.getpriority(os.PRIO_PROCESS, 0), flush=True); time.sleep(120)"
    )
    replica = (
        "import os, subprocess, sys, time\n"
        "from serve.vllm_process import engine_child_env\n"
        f"p = subprocess.Popen([sys.executable, '-c', {engine!r}], env={{**os.environ, **engine_child_env(7)}},"
        f" stdout=open({str(tmp_path / 'engine.out')!r}, 'w'))\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen(
        [sys.executable, "-c", replica],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    engine_pid = int(proc.stdout.readline())
    out = tmp_path / "engine.out"
    deadline = time.monotonic() + 60
    while not out.read_text().strip():
        assert time.monotonic() < deadline, "the engine process never started"
        time.sleep(0.1)
    assert int(out.read_text()) == 7  # the engine's niceness, taken in its own process
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{engine_pid}").exists() and "Z" not in _state(engine_pid):
        assert time.monotonic() < deadline, "the engine outlived its replica"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"
