"""The main job on embedded defaults: tiny base model -> dataset -> LoRA under
Ray Train -> MLflow version + alias -> Ray Serve (vLLM) -> answers through the
official `openai` client. Every step is real; each is timed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BASE_MODEL_NAME = "sekisho-tiny-base"
ASK_CONCURRENCY = 8  # questions in flight while the demo compares the two models


@dataclass
class DemoResult:
    base_url: str
    api_key: str
    base_version: str
    adapter_version: str
    run_id: str
    served_models: list[str]
    fine_tuned_matched: int
    base_matched: int
    total: int
    timings: dict[str, float] = field(default_factory=dict)
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)


class Steps:
    """Numbered steps with a spinner while running and the time each took."""

    def __init__(self, console: Console, total: int):
        self.console, self.total, self.n, self.timings = console, total, 0, {}

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.n += 1
        label = f"[{self.n}/{self.total}] {title}"
        start = time.perf_counter()
        with self.console.status(label + " ..."):
            yield
        took = time.perf_counter() - start
        self.timings[title] = took
        self.console.print(f"[green]✓[/green] {label} [dim]({took:.1f} s)[/dim]")


def build_base_model(home: Path, steps: Steps) -> str:
    """Step 1: build the tiny base offline and register it (alias `production`)."""
    from airlock import import_model
    from data import read_chat_jsonl
    from data.prepare import DatasetConfig
    from experiments import set_alias
    from train import TinyModelConfig, build_tiny_model

    with steps.step("Build a tiny Llama base model offline and import it (checked, hashed, stored)"):
        cfg = TinyModelConfig.from_yaml(CONFIGS / "models" / "tiny_base.yaml")
        data_cfg = DatasetConfig.from_yaml(CONFIGS / "data" / "demo_ja.yaml")
        conversations = read_chat_jsonl(data_cfg.path).conversations
        corpus = [m["content"] for conv in conversations for m in conv]
        model_dir = build_tiny_model(home / "build" / "tiny-base", corpus, cfg)
        version = import_model(model_dir, BASE_MODEL_NAME).version
        set_alias(BASE_MODEL_NAME, "production", version)
    return version


def run_demo(
    home: Path,
    console: Console | None = None,
    keep_serving: bool = False,
    train_config: Path | None = None,
    serve_config: Path | None = None,
    port: int | None = None,
) -> DemoResult:
    """Run the main job; returns what it measured. Leaves Ray and Serve running
    when `keep_serving` (the caller stops them with `cluster.local.stop()`)."""
    from cluster.local import start_local, stop
    from data import read_chat_jsonl
    from data.prepare import DatasetConfig
    from experiments import set_alias
    from serve import ServeAppConfig, deploy, resolve_app
    from serve.gateway import KeyStore
    from train import LoraJobConfig
    from train.job import run_job

    console = console or Console()
    steps = Steps(console, 6)
    train_config = train_config or CONFIGS / "train" / "demo_lora.yaml"
    serve_config = serve_config or CONFIGS / "serve" / "demo.yaml"
    job_cfg = LoraJobConfig.from_yaml(train_config)
    app_cfg = ServeAppConfig.from_yaml(serve_config)
    if port is not None:
        app_cfg = app_cfg.model_copy(update={"port": port})

    base_version = build_base_model(home, steps)
    with steps.step("Prepare the sample dataset and start Ray (token auth, no egress)"):
        data_cfg = DatasetConfig.from_yaml(job_cfg.dataset)
        qa = [(c[0]["content"], c[-1]["content"]) for c in read_chat_jsonl(data_cfg.path).conversations]
        start_local(home, num_cpus=4)
    try:
        with steps.step("Fine-tune a LoRA adapter with PEFT under Ray Train"):
            job = run_job(job_cfg, train_config.read_text(encoding="utf-8"), home)
        with steps.step(f"Promote {job.model_name} version {job.version} to alias 'production'"):
            set_alias(job.model_name, "production", job.version)
        with steps.step("Serve base + adapter with Ray Serve and vLLM, resolved from the alias"):
            resolved = resolve_app(app_cfg, home / "serve-cache")
            base_url = deploy(resolved)
            names = [n for m in app_cfg.models for n in [m.name] + [a.name for a in m.adapters]]
            api_key = KeyStore(app_cfg.gateway.db_url).create(f"demo-{int(time.time())}", names)
        with steps.step("Ask every trained question through the openai client"):
            result = ask_all(base_url, app_cfg, qa, api_key)
    except BaseException:
        stop()
        raise
    result.base_version, result.adapter_version, result.run_id = base_version, job.version, job.run_id
    result.timings = steps.timings
    print_report(console, result, job, app_cfg, home)
    if not keep_serving:
        stop()
    return result


def ask_all(base_url: str, app_cfg, qa: list[tuple[str, str]], api_key: str) -> DemoResult:
    """Send each question to the base model and the fine-tuned adapter (greedy)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
    served = [m.id for m in client.models.list().data]
    base_name = app_cfg.models[0].name
    tuned_name = app_cfg.models[0].adapters[0].name

    def answer(model: str, question: str) -> str:
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=96
        )
        return (r.choices[0].message.content or "").strip()

    # A few questions at once: the engine batches them (sequentially, each answer
    # would wait for the one before it).
    questions = [q for q, _ in qa]
    with ThreadPoolExecutor(ASK_CONCURRENCY) as pool:
        tuned_answers = pool.map(answer, [tuned_name] * len(qa), questions)
        base_answers = pool.map(answer, [base_name] * len(qa), questions)
        rows = [
            (q, expected, tuned, base)
            for (q, expected), tuned, base in zip(qa, list(tuned_answers), list(base_answers))
        ]
    tuned_ok = sum(tuned == expected.strip() for _, expected, tuned, _ in rows)
    base_ok = sum(base == expected.strip() for _, expected, _, base in rows)
    return DemoResult(base_url, api_key, "", "", "", served, tuned_ok, base_ok, len(qa), rows=rows)


def print_report(console: Console, r: DemoResult, job, app_cfg, home: Path) -> None:
    table = Table(title="Trained questions: fine-tuned vs base (greedy)", show_lines=False)
    for col in ("question", "trained answer", "fine-tuned", "base"):
        table.add_column(col, overflow="fold", max_width=28)

    def mark(answer: str, expected: str) -> str:
        return f"[green]{answer}[/green]" if answer == expected else f"[red]{answer[:40]}[/red]"

    for q, exp, tuned, base in r.rows:
        table.add_row(q, exp, mark(tuned, exp), mark(base, exp))
    console.print(table)
    loss = job.metrics.get("loss")
    console.print(
        f"MLflow run {r.run_id}: final loss {loss:.4f}; adapter "
        f"{job.model_name} v{r.adapter_version} on base {BASE_MODEL_NAME} v{r.base_version}"
    )
    console.print(f"Served models: {', '.join(r.served_models)} at {r.base_url}")
    console.print(
        f"Keep talking to it (with --keep-serving): OpenAI(base_url={r.base_url!r}, "
        f"api_key={r.api_key!r}).chat.completions.create(model={app_cfg.models[0].adapters[0].name!r}, ...)"
        "  (the key is shown once; `sekisho keys create` makes more)",
        markup=False,
        highlight=False,
    )
    console.print(
        f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri sqlite:///{home}/mlflow.db "
        "--host 127.0.0.1 --port 5000"
    )
    console.print("Step times: " + ", ".join(f"{k.split()[0]} {v:.0f}s" for k, v in r.timings.items()))
    console.print(
        f"demo: fine-tuned matched {r.fine_tuned_matched}/{r.total} trained answers, "
        f"base matched {r.base_matched}/{r.total}",
        markup=False,
        highlight=False,
    )
