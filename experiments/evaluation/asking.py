"""Asking many questions at once, and remembering the answers.

`BatchAsker` sends conversations to one served model with `concurrency` requests
in flight (the engine batches them; one at a time, each answer would wait for the
one before it). `AnswerCache` keeps every answer on disk as soon as it arrives,
keyed by the SHA-256 of what was asked and the model version that answered, so an
evaluation interrupted halfway resumes without asking again what was answered."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from foundation import UserError

Conversation = tuple[tuple[str, str], ...]  # ((role, content), ...) before the user turns


def question_key(
    version: str, system: str | None, few_shots: Sequence, turns: Sequence[str], max_tokens: int
) -> str:
    """The cache key of one question: SHA-256 of the version and everything sent."""
    payload = json.dumps(
        {"v": version, "s": system, "f": [list(x) for x in few_shots], "t": list(turns), "m": max_tokens},
        ensure_ascii=False,
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class AnswerCache:
    """Answers of one evaluation, one JSON line each ({key, answers, seconds}),
    appended and flushed as they arrive. A torn last line (the process was killed
    while writing it) is ignored."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.lock = threading.Lock()
        self.known: dict[str, tuple[list[str], float]] = {}
        if self.path and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.known[row["key"]] = (list(row["answers"]), float(row["seconds"]))
                except (ValueError, KeyError, TypeError):
                    continue
        self.resumed = 0

    def get(self, key: str) -> tuple[list[str], float] | None:
        hit = self.known.get(key)
        if hit is not None:
            with self.lock:
                self.resumed += 1
        return hit

    def put(self, key: str, answers: list[str], seconds: float) -> None:
        with self.lock:
            self.known[key] = (answers, seconds)
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(
                    json.dumps({"key": key, "answers": answers, "seconds": seconds}, ensure_ascii=False)
                    + "\n"
                )


class BatchAsker:
    """Asks one served model greedily, `concurrency` questions at a time."""

    def __init__(
        self, base_url: str, api_key: str, model: str, concurrency: int = 16, timeout_s: float = 300.0
    ):
        import httpx
        from openai import OpenAI

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = OpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            timeout=timeout_s,
            http_client=httpx.Client(limits=limits, timeout=timeout_s),
        )
        self.model, self.concurrency = model, concurrency

    def converse(
        self, turns: Sequence[str], max_tokens: int, system: str | None = None, few_shots: Sequence = ()
    ) -> tuple[list[str], float]:
        """The answer to each user turn (each sent with the conversation so far) and
        the seconds the first answer took.

        Raises:
            UserError: the endpoint refused or could not be reached.
        """
        import openai

        messages = [{"role": "system", "content": system}] if system else []
        for q, a in few_shots:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        answers: list[str] = []
        first = 0.0
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            start = time.perf_counter()
            try:
                r = self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=0, max_tokens=max_tokens
                )
            except openai.APIError as exc:
                raise UserError(
                    f"evaluation of {self.model!r} at {self.client.base_url}: the endpoint answered with an error: {exc}"
                ) from None
            answer = (r.choices[0].message.content or "").strip()
            first = first or time.perf_counter() - start
            answers.append(answer)
            messages.append({"role": "assistant", "content": answer})
        return answers, first

    def ask_all(
        self, jobs: Sequence[tuple[str, Callable[[], tuple[list[str], float]]]], cache: AnswerCache
    ) -> dict:
        """Run each (key, ask) not in `cache`, `concurrency` at a time, storing each answer
        in `cache` as it arrives; returns key -> (answers, seconds) for every job.
        The first failure stops the batch (answers already stored stay)."""
        out = {}
        todo = []
        for key, ask in jobs:
            hit = cache.get(key)  # counted once per question, a repeated one included
            if hit is not None:
                out[key] = hit
            else:
                todo.append((key, ask))
        todo = list({k: (k, a) for k, a in todo}.values())

        def one(job):
            key, ask = job
            answers, seconds = ask()
            cache.put(key, answers, seconds)
            return key, (answers, seconds)

        with ThreadPoolExecutor(self.concurrency) as pool:
            for key, value in pool.map(one, todo):
                out[key] = value
        return out
