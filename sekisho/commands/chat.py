"""`sekisho chat MODEL`: a terminal chat through the gateway with an API key.

Each line typed is a user turn; the answer streams back token by token and joins
the history, so the next turn carries the whole conversation. `/clear` forgets the
history, `/exit` (or end of input) leaves. The key comes from --api-key-file or
$SEKISHO_API_KEY, never from the command line, which every user of the machine
can read. A key the gateway refuses, or a model it does not serve to that key,
ends the chat with the gateway's own error on one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from foundation import UserError

DEFAULT_URL = "http://127.0.0.1:8000/v1"
KEY_ENV = "SEKISHO_API_KEY"
# Statuses that no later turn can cure: the key, or what it may reach.
FATAL = {401, 403, 404}


def api_key(key_file: str | None) -> str:
    """The gateway key: the first line of `key_file`, else $SEKISHO_API_KEY.

    Raises:
        UserError: the file cannot be read or is empty, or there is no key at all.
    """
    if key_file:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"--api-key-file {key_file}: {exc.strerror}") from None
        if not key:
            raise UserError(f"--api-key-file {key_file}: the file is empty")
        return key
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise UserError(
            f"chat: no API key; set {KEY_ENV} or pass --api-key-file FILE (a key from `sekisho keys create`)."
        )
    return key


def error_line(exc) -> str:
    """The gateway's OpenAI-shaped error as one line: `404 model_not_found: ...`."""
    import openai

    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach the gateway: {exc.__cause__ or exc}"
    body = getattr(exc, "body", None)
    error = body.get("error", body) if isinstance(body, dict) else {}
    message = (error.get("message") if isinstance(error, dict) else None) or str(exc)
    code = error.get("code") if isinstance(error, dict) else None
    status = getattr(exc, "status_code", None)
    head = " ".join(str(p) for p in (status, code) if p)
    return f"{head}: {message}" if head else message


class Chat:
    """One conversation with `model` at `url`: its history and the client."""

    def __init__(
        self, url: str, key: str, model: str, system: str | None, max_tokens: int, temperature: float
    ):
        from openai import OpenAI

        self.client = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=300)
        self.url, self.model = url, model
        self.max_tokens, self.temperature = max_tokens, temperature
        self.system = [{"role": "system", "content": system}] if system else []
        self.history: list[dict] = []

    def check_model(self) -> None:
        """Refuse, before the first turn, a key the gateway refuses or a model it does
        not list for this key.

        Raises:
            UserError: with the gateway's error, or the models the key may use.
        """
        import openai

        try:
            seen = sorted(m.id for m in self.client.models.list().data)
        except openai.APIError as exc:
            raise UserError(f"chat: {self.url}: {error_line(exc)}") from None
        if self.model not in seen:
            raise UserError(
                f"chat: model {self.model!r} is not served at {self.url} to this key; "
                f"it may use: {', '.join(seen) or 'none'}."
            )

    def turn(self, text: str, out) -> None:
        """Send one user turn with the history, stream the answer to `out`, keep both.

        Raises:
            UserError: the gateway refused the key or the model (see FATAL).
        """
        import openai

        messages = [*self.system, *self.history, {"role": "user", "content": text}]
        answer: list[str] = []
        try:
            stream = self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                stream=True,
            )
            for chunk in stream:
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece:
                    answer.append(piece)
                    out.write(piece)
                    out.flush()
        except openai.APIError as exc:
            if answer:
                out.write("\n")
            if getattr(exc, "status_code", None) in FATAL:
                raise UserError(f"chat: {error_line(exc)}") from None
            print(f"error: {error_line(exc)} (this turn is not kept)", file=sys.stderr, flush=True)
            return
        out.write("\n")
        out.flush()
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(answer)}]


def cmd_chat(args) -> int:
    """Chat with a served model through the gateway: a line per turn, the answer
    streamed, the history kept; /clear forgets it, /exit leaves."""
    chat = Chat(
        args.url, api_key(args.api_key_file), args.model, args.system, args.max_tokens, args.temperature
    )
    chat.check_model()
    interactive = sys.stdin.isatty()
    if interactive:
        print(
            f"chat with {args.model} at {args.url}; /clear forgets the history, /exit leaves", file=sys.stderr
        )
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        text = line.strip()
        if text in ("/exit", "/quit"):
            return 0
        if text == "/clear":
            chat.history.clear()
            print("(history cleared)", file=sys.stderr, flush=True)
            continue
        if text:
            chat.turn(text, sys.stdout)


def register(groups) -> None:
    c = groups.add_parser("chat", help=cmd_chat.__doc__)
    c.set_defaults(fn=cmd_chat)
    c.add_argument(
        "model", help="the model's name at the gateway (as `GET /v1/models` lists it, e.g. tiny-ja)"
    )
    c.add_argument(
        "--url",
        default=os.environ.get("SEKISHO_URL", DEFAULT_URL),
        help=f"the gateway's OpenAI base URL (default $SEKISHO_URL, else {DEFAULT_URL})",
    )
    c.add_argument(
        "--api-key-file",
        help=f"file holding the key (keep it mode 0600; default ${KEY_ENV})",
    )
    c.add_argument("--system", help="a system message put before every turn")
    c.add_argument("--max-tokens", type=int, default=512, help="most tokens per answer (default 512)")
    c.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
