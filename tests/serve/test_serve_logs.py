"""`sekisho serve logs` and `serve up`'s engine phases, on the demo's real engine:
the engine logs into the Sekisho home, `serve logs APP MODEL` prints that log
(the live replica's, found through its metrics target), `--follow` prints what
is written after it started, and the phases `serve up` prints, fed the real
engine log line by line as vLLM wrote it, come in order: placing, the log's
path, starting, loading weights, compiling, ready."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sekisho.cli import main
from serve.vllm_process import PHASES, engine_logs

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_log(main_job, sekisho_home):
    logs = engine_logs("demo", "tiny-base", home=sekisho_home)
    assert logs, f"no engine log under {sekisho_home / 'logs'}"
    return logs[-1]


def test_serve_logs_prints_the_live_engines_log(demo_log, sekisho_home, capsys):
    model, replica, path = demo_log
    assert model == "tiny-base" and path.parent == sekisho_home / "logs" / "serve" / "demo"
    assert main(["serve", "logs", "demo", "tiny-base", "--lines", "0"]) == 0
    out = capsys.readouterr().out
    assert "Starting vLLM server on" in out and "sekisho gateway listening" in out
    assert out.strip().splitlines()[0] == path.read_text(errors="replace").splitlines()[0]

    assert main(["serve", "logs", "demo", "no-such-model"]) != 0
    err = capsys.readouterr()
    assert "no engine log of model 'no-such-model' of app 'demo'" in err.out + err.err


def test_serve_up_phases_follow_the_engine_log_and_logs_follow(demo_log, tmp_path):
    from sekisho.commands.serve import EnginePhases

    _, _, real = demo_log
    lines = real.read_text(errors="replace").splitlines(keepends=True)
    home = tmp_path / "home"
    log = home / "logs" / "serve" / "demo" / "tiny-base--r1.log"
    out = io.StringIO()
    watch = EnginePhases("demo", ["tiny-base"], home, out=out)
    watch.since = 0
    with watch:
        log.parent.mkdir(parents=True)
        with log.open("w") as f:
            for line in lines:
                f.write(line)
                f.flush()
                watch.poll()
    said = out.getvalue().splitlines()
    assert said[:2] == ["  tiny-base: placing", f"  tiny-base [replica r1]: log {log}"], said
    assert ["placing"] + [line.split("]: ", 1)[1] for line in said[2:]] == list(PHASES), said

    follow = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "sekisho"),
            "--home",
            str(home),
            "serve",
            "logs",
            "demo",
            "-f",
            "-n",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first = follow.stdout.readline()
        assert first.strip() == lines[-1].strip()
        with log.open("a") as f:
            f.write(f"written later {time.time()}\n")
        assert follow.stdout.readline().startswith("written later")
    finally:
        follow.terminate()
        follow.wait(10)
