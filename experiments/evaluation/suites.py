"""Readers for the published Japanese evaluation suites, each in the format its
authors publish (docs/evaluation-suites.md names the source of each format):

| format | file | one item |
| --- | --- | --- |
| `llm_jp_eval` | llm-jp-eval's preprocessed task JSON: {instruction, output_length, metrics, few_shots, samples} | a sample {input, output}, scored by the file's metrics |
| `mt_bench` | Japanese MT-Bench question JSONL {question_id, category, turns}; references {question_id, choices: [{turns}]} | a multi-turn question, scored by the judge |
| `answer_carefully` | AnswerCarefully JSON array of {ID, text, output, meta: {risk-area, harm-type, specific-harm}} | a harmful (or borderline-benign) request with a reference answer and its harm category |
| `lawqa_jp` | lawqa_jp selection.json: {samples: [{問題文, 選択肢, output, ...}]} | a four-choice legal question, scored by accuracy |

Every item remembers where it came from (`file:line`); a malformed row is refused
with that place and what is wrong, all bad rows of a file at once."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from foundation import ConfigError

FORMATS = ("llm_jp_eval", "mt_bench", "answer_carefully", "lawqa_jp")
LLM_JP_EVAL_METRICS = ("exact_match", "char_f1", "set_f1", "mathematical_equivalence")
_SLUG = re.compile(r"[^\w.-]+")


def slug(text: str) -> str:
    """A category name usable in an MLflow metric key (letters of any script, digits,
    `_ . -`; anything else becomes `_`)."""
    return _SLUG.sub("_", text.strip()).strip("_") or "general"


@dataclass(frozen=True)
class Item:
    """One question of a suite, ready to ask."""

    suite: str
    format: str
    id: str
    where: str  # file:line
    turns: tuple[str, ...]  # user turns; one but for multi-turn sets
    category: str
    references: tuple[str, ...] = ()  # one per turn where the format has them
    metrics: tuple[str, ...] = ()
    system: str | None = None
    few_shots: tuple[tuple[str, str], ...] = ()
    choices: dict[str, str] = field(default_factory=dict)
    answer_label: str | None = None
    harmful: bool | None = None  # AnswerCarefully: True harmful, False borderline-benign


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _elements(text: str, start: int, path: Path) -> list[tuple[int, object]]:
    """(line, value) of each element of the JSON array that starts at `start`."""
    dec = json.JSONDecoder()
    i = _skip_ws(text, start)
    out: list[tuple[int, object]] = []
    if text[i] != "[":
        raise ConfigError(f"{path}:{_line(text, i)}: expected a JSON array.")
    i = _skip_ws(text, i + 1)
    if text[i] == "]":
        return out
    while True:
        value, end = dec.raw_decode(text, i)
        out.append((_line(text, i), value))
        i = _skip_ws(text, end)
        if text[i] == "]":
            return out
        i = _skip_ws(text, i + 1)  # the comma


def _member_offsets(text: str, path: Path) -> dict[str, int]:
    """Offset of each top-level member's value when the document is an object."""
    dec = json.JSONDecoder()
    i = _skip_ws(text, 0)
    out: dict[str, int] = {}
    if text[i] != "{":
        return out
    i = _skip_ws(text, i + 1)
    while text[i] != "}":
        key, i = dec.raw_decode(text, i)
        i = _skip_ws(text, _skip_ws(text, i) + 1)  # past ':'
        out[key] = i
        _, i = dec.raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
    return out


def _load_json(path: Path) -> tuple[str, object]:
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found.")
    text = path.read_text(encoding="utf-8-sig")
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}).") from None


def _array_rows(path: Path, key: str | None) -> tuple[object, list[tuple[int, object]]]:
    """The document and (line, row) of its array: the document itself, or its member `key`."""
    text, doc = _load_json(path)
    if isinstance(doc, list):
        return doc, _elements(text, 0, path)
    if key and isinstance(doc, dict) and isinstance(doc.get(key), list):
        return doc, _elements(text, _member_offsets(text, path)[key], path)
    want = f"a JSON array or an object with a `{key}` array" if key else "a JSON array"
    raise ConfigError(f"{path}:1: expected {want}.")


def _text(row: dict, key: str, where: str, errors: list[str], required: bool = True) -> str:
    value = row.get(key)
    if isinstance(value, str) and value.strip():
        return value
    if not required and (value is None or value == ""):
        return ""
    errors.append(
        f"{where}: `{key}` must be a non-empty string (got {json.dumps(value, ensure_ascii=False)})."
    )
    return ""


def _check(errors: list[str], items: list[Item], path: Path, what: str) -> list[Item]:
    if errors:
        raise ConfigError("\n".join(errors))
    if not items:
        raise ConfigError(f"{path}: no items (expected {what}).")
    return items


def read_llm_jp_eval(path: str | Path, suite: str) -> list[Item]:
    """A preprocessed llm-jp-eval task file (dataset_dir/evaluation/test/TASK.json).
    The task name (the file's stem) is the category; the file's `metrics` score it."""
    path = Path(path)
    text, doc = _load_json(path)
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}:1: expected an llm-jp-eval task object {{instruction, metrics, samples}}.")
    errors: list[str] = []
    metrics = doc.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        errors.append(f"{path}:1: `metrics` must be a non-empty list (llm-jp-eval task file).")
        metrics = []
    unknown = [x for x in metrics if x not in LLM_JP_EVAL_METRICS]
    if unknown:
        errors.append(
            f"{path}:1: metrics {unknown} are not computed here; supported: {list(LLM_JP_EVAL_METRICS)}."
        )
    instruction = doc.get("instruction")
    if not isinstance(instruction, str):
        errors.append(f"{path}:1: `instruction` must be a string.")
    if not isinstance(doc.get("samples"), list):
        errors.append(f"{path}:1: `samples` must be a list of {{input, output}}.")
    if errors:
        raise ConfigError("\n".join(errors))
    offsets = _member_offsets(text, path)
    shots = []
    if isinstance(doc.get("few_shots"), list):
        for line, row in _elements(text, offsets["few_shots"], path):
            if (
                isinstance(row, dict)
                and isinstance(row.get("input"), str)
                and isinstance(row.get("output"), str)
            ):
                shots.append((row["input"], row["output"]))
            else:
                errors.append(f"{path}:{line}: few_shots rows are {{input, output}} strings.")
    items = []
    for n, (line, row) in enumerate(_elements(text, offsets["samples"], path)):
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            errors.append(f"{where}: a sample must be an object {{input, output}}.")
            continue
        question = _text(row, "input", where, errors)
        if not isinstance(row.get("output"), str):
            errors.append(f"{where}: `output` must be a string.")
            continue
        items.append(
            Item(
                suite,
                "llm_jp_eval",
                f"{path.stem}-{n}",
                where,
                (question,),
                slug(path.stem),
                (row["output"],),
                tuple(metrics),
                system=instruction or None,
                few_shots=tuple(shots),
            )
        )
    return _check(errors, items, path, "samples")


def read_mt_bench(path: str | Path, suite: str, references: str | Path | None = None) -> list[Item]:
    """Japanese MT-Bench questions (question.jsonl: {question_id, category, turns}),
    with the reference answers of `references` (reference_answer/MODEL.jsonl:
    {question_id, choices: [{turns}]}) where a question has one."""
    path = Path(path)
    refs = _mt_bench_references(Path(references)) if references else {}
    if not path.is_file():
        raise ConfigError(f"{path}: suite file not found.")
    errors: list[str] = []
    items = []
    seen = set()
    for n, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append(f"{where}: not valid JSON ({exc.msg}).")
            continue
        if not isinstance(row, dict):
            errors.append(f"{where}: expected an object {{question_id, category, turns}}.")
            continue
        qid = row.get("question_id")
        if not isinstance(qid, int | str) or isinstance(qid, bool):
            errors.append(f"{where}: `question_id` must be a number or string.")
            continue
        turns = row.get("turns")
        if (
            not isinstance(turns, list)
            or not turns
            or not all(isinstance(t, str) and t.strip() for t in turns)
        ):
            errors.append(f"{where}: `turns` must be a non-empty list of non-empty strings.")
            continue
        if qid in seen:
            errors.append(f"{where}: question_id {qid} appears twice.")
        seen.add(qid)
        category = row.get("category") if isinstance(row.get("category"), str) else "general"
        ref = refs.pop(qid, (None, ()))[1]
        items.append(
            Item(
                suite, "mt_bench", str(qid), where, tuple(turns), slug(category), tuple(ref), ("judge_score",)
            )
        )
    for qid, (where, _) in refs.items():
        errors.append(f"{where}: reference for question_id {qid}, which {path} does not have.")
    return _check(errors, items, path, "JSONL of {question_id, category, turns}")


def _mt_bench_references(path: Path) -> dict:
    """question_id -> (file:line, reference turns)."""
    if not path.is_file():
        raise ConfigError(f"{path}: reference answer file not found.")
    out, errors = {}, []
    for n, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(raw)
            turns = row["choices"][0]["turns"]
            qid = row["question_id"]
            assert isinstance(turns, list) and all(isinstance(t, str) for t in turns)
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, AssertionError):
            errors.append(f"{where}: expected {{question_id, choices: [{{turns: [str, ...]}}]}}.")
            continue
        out[qid] = (where, tuple(turns))
    if errors:
        raise ConfigError("\n".join(errors))
    return out


def read_answer_carefully(path: str | Path, suite: str, harmful: bool = True) -> list[Item]:
    """AnswerCarefully (a JSON array of {ID, text, output, meta: {risk-area,
    harm-type, specific-harm}}). The category is `meta.risk-area`. `harmful=False`
    reads a borderline set in the same format: benign requests that only look
    risky, which the model should answer, not refuse."""
    path = Path(path)
    _, rows = _array_rows(path, None)
    errors: list[str] = []
    items = []
    for line, row in rows:
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            errors.append(f"{where}: expected an object {{ID, text, output, meta}}.")
            continue
        question = _text(row, "text", where, errors)
        reference = _text(row, "output", where, errors, required=False)
        meta = row.get("meta")
        if not isinstance(meta, dict) or not isinstance(meta.get("risk-area"), str) or not meta["risk-area"]:
            errors.append(f"{where}: `meta.risk-area` (the harm category) must be a non-empty string.")
            continue
        if not question:
            continue
        items.append(
            Item(
                suite,
                "answer_carefully",
                str(row.get("ID") or f"{path.stem}-{line}"),
                where,
                (question,),
                slug(meta["risk-area"]),
                (reference,) if reference else (),
                ("harmful_rate", "refusal_rate") if harmful else ("over_refusal_rate",),
                harmful=harmful,
            )
        )
    return _check(errors, items, path, "AnswerCarefully rows")


_CHOICE_LINE = re.compile(r"^\s*([a-zA-Zａ-ｚＡ-Ｚ])\s*[.．:：)）、]?\s*(.+?)\s*$")


def parse_choices(text: str) -> dict[str, str]:
    """lawqa_jp's `選択肢`: one choice a line, `a 本文` (also `a. `, `a：`, full-width letters)."""
    out = {}
    for raw in text.splitlines():
        m = _CHOICE_LINE.match(raw)
        if m:
            out[m.group(1).translate(_FULL_LATIN).lower()] = m.group(2)
    return out


_FULL_LATIN = str.maketrans(
    "ａｂｃｄｅｆｇｈｉｊｋｌｍｎｏｐｑｒｓｔｕｖｗｘｙｚＡＢＣＤＥＦＧＨＩＪＫＬＭＮＯＰＱＲＳＴＵＶＷＸＹＺ",
    "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz",
)


def read_lawqa_jp(path: str | Path, suite: str) -> list[Item]:
    """lawqa_jp's selection.json ({samples: [{ファイル名, 指示, 問題文, 選択肢, output,
    references, コンテキスト}]}, or the array alone): four-choice legal questions,
    scored by accuracy. The category is `category` when a row has one, else `law`."""
    path = Path(path)
    _, rows = _array_rows(path, "samples")
    errors: list[str] = []
    items = []
    for line, row in rows:
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            errors.append(f"{where}: expected an object {{問題文, 選択肢, output}}.")
            continue
        question = _text(row, "問題文", where, errors)
        raw_choices = _text(row, "選択肢", where, errors)
        label = _text(row, "output", where, errors).strip().translate(_FULL_LATIN).lower()
        choices = parse_choices(raw_choices) if raw_choices else {}
        if raw_choices and len(choices) < 2:
            errors.append(f"{where}: `選択肢` must list the choices one a line (`a ...`, `b ...`).")
            continue
        if label and choices and label not in choices:
            errors.append(f"{where}: `output` {label!r} is not one of the choices {sorted(choices)}.")
            continue
        if not (question and choices and label):
            continue
        instruction = row.get("指示") if isinstance(row.get("指示"), str) else None
        context = row.get("コンテキスト") if isinstance(row.get("コンテキスト"), str) else ""
        body = "\n".join(x for x in (context, question, raw_choices) if x)
        items.append(
            Item(
                suite,
                "lawqa_jp",
                str(row.get("ファイル名") or f"{path.stem}-{line}"),
                where,
                (body,),
                slug(str(row.get("category") or "law")),
                (label,),
                ("accuracy",),
                system=instruction,
                choices=choices,
                answer_label=label,
            )
        )
    return _check(errors, items, path, "lawqa_jp samples")
