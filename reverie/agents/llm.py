"""LLM access: the `openai` client against any OpenAI-compatible server, answers checked by pydantic.

A JSON-schema `response_format` is tried first; a server that rejects it (4xx) is asked again for
plain JSON in the text, which is dug out of the reply (```json fences and chatter allowed).
Malformed answers are retried a bounded number of times. A connection failure or timeout marks
the client dead for the rest of the run, so a dead server costs one timeout, never a hung batch.
Every call is handed to `record` (Studio writes it to the store; agents never import the store).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, TypeVar

from pydantic import BaseModel, ValidationError

from reverie.types import canonical_json

OPENAI_URL = "https://api.openai.com/v1"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini"

T = TypeVar("T", bound=BaseModel)
RecordFn = Callable[[dict], None]


class LLMUnavailable(Exception):
    """No usable answer from the LLM; the caller falls back to its offline path."""


@dataclass(frozen=True)
class LLMSettings:
    base_url: str = ""
    model: str = ""
    api_key: str = ""
    timeout: float = 60.0
    retries: int = 2  # extra tries after a malformed answer

    @property
    def configured(self) -> bool:
        return bool(self.base_url or self.api_key)

    @property
    def url(self) -> str:
        return self.base_url or OPENAI_URL


def llm_settings(section: Optional[Mapping[str, Any]] = None, url: Optional[str] = None, model: Optional[str] = None,
                 env: Optional[Mapping[str, str]] = None) -> LLMSettings:
    """CLI options win over the [llm] table of reverie.toml, which wins over OPENAI_* variables.

    The config file beats the environment because OPENAI_BASE_URL is often set for other tools,
    while reverie.toml is written for reverie alone.
    """
    section = dict(section or {})
    env = os.environ if env is None else env
    base_url = url or section.get("base_url") or env.get("OPENAI_BASE_URL") or ""
    api_key = section.get("api_key") or env.get("OPENAI_API_KEY") or ""
    chosen_model = model or section.get("model") or ""
    if not base_url and api_key and not chosen_model:
        chosen_model = OPENAI_DEFAULT_MODEL
    return LLMSettings(
        base_url=str(base_url).rstrip("/"),
        model=str(chosen_model),
        api_key=str(api_key),
        timeout=float(section.get("timeout", 60.0)),
        retries=max(0, int(section.get("retries", 2))),
    )


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def extract_json(text: str) -> Any:
    """The first JSON object in a reply: fenced, bare, or buried in chatter. ValueError if none."""
    text = _THINK.sub("", text or "")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for start in [m.start() for m in re.finditer(r"\{", candidate)]:
            try:
                obj, _ = decoder.raw_decode(candidate, start)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    raise ValueError("no JSON object in the reply")


def parse_reply(text: str, schema: type[T]) -> T:
    try:
        return schema.model_validate(extract_json(text))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValueError(f"reply does not match the schema ({where}: {first.get('msg')})") from None


class LLMClient:
    """One client per run: it remembers whether the server is dead and whether it takes schemas."""

    def __init__(self, settings: LLMSettings, record: Optional[RecordFn] = None):
        import openai

        self.settings = settings
        self.record = record or (lambda call: None)
        # Retries are ours (bounded, on malformed answers); the SDK's own retries would multiply
        # the wait on a dead server.
        self.client = openai.OpenAI(base_url=settings.url, api_key=settings.api_key or "not-needed",
                                    timeout=settings.timeout, max_retries=0)
        self.dead = ""  # why the server is not called any more, once it failed to answer
        self.schema_ok = True
        self._model = settings.model

    @property
    def model(self) -> str:
        if not self._model:
            self._model = self._discover_model()
        return self._model

    def _discover_model(self) -> str:
        """No model configured: take the first one the server lists (Ollama, llama.cpp, LM Studio)."""
        import openai

        if self.dead:
            raise LLMUnavailable(self.dead)
        started = time.monotonic()
        call = {"purpose": "models", "model": "", "base_url": self.settings.url, "system_hash": "",
                "request_json": canonical_json({"path": "/models"}), "response_text": "", "error": ""}
        try:
            ids = [m.id for m in self.client.models.list()]
        except openai.APIError as e:
            self.dead = f"cannot list models at {self.settings.url} ({_short(e)})"
            self.record({**call, "seconds": time.monotonic() - started, "ok": False, "error": self.dead})
            raise LLMUnavailable(self.dead) from None
        self.record({**call, "seconds": time.monotonic() - started, "ok": bool(ids), "response_text": json.dumps(ids)})
        if not ids:
            self.dead = f"the server at {self.settings.url} lists no models: pass --llm-model"
            raise LLMUnavailable(self.dead)
        return ids[0]

    def structured(self, system: str, user: str, schema: type[T], purpose: str, system_hash: str = "",
                   temperature: float = 0.8, check: Optional[Callable[[T], str]] = None) -> T:
        """Ask, parse and validate; retry malformed answers; raise LLMUnavailable when out of tries.

        `check` returns a complaint ("" when fine) for answers that parse but break a rule.
        """
        if self.dead:
            raise LLMUnavailable(self.dead)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        problem = ""
        for _ in range(1 + self.settings.retries):
            text, call = self._complete(messages, schema, purpose, system_hash, temperature)
            if call is None:  # the server failed this try; already recorded
                problem = "the server returned an error"
                continue
            try:
                answer = parse_reply(text, schema)
                problem = check(answer) if check else ""
            except ValueError as e:
                problem = str(e)
            self.record({**call, "ok": not problem, "error": problem})
            if not problem:
                return answer
            # Show the model its mistake; small local models usually fix it on the second try.
            messages = messages[:2] + [
                {"role": "assistant", "content": text[:4000]},
                {"role": "user", "content": f"That answer was not usable: {problem}. Reply with only the JSON object."},
            ]
        raise LLMUnavailable(f"{self.model} gave no usable answer in {1 + self.settings.retries} tries ({problem})")

    def _complete(self, messages: list[dict], schema: type[BaseModel], purpose: str, system_hash: str,
                  temperature: float) -> tuple[str, Optional[dict]]:
        """One chat completion: (text, the call to record) or ("", None) after a recorded server error."""
        import openai

        while True:
            model = self.model
            kwargs: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature}
            if self.schema_ok:
                kwargs["response_format"] = {"type": "json_schema",
                                             "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()}}
            call = {"purpose": purpose, "model": model, "base_url": self.settings.url, "system_hash": system_hash,
                    "request_json": canonical_json(kwargs), "response_text": "", "error": ""}
            started = time.monotonic()
            try:
                response = self.client.chat.completions.create(**kwargs)
            except openai.APIConnectionError as e:  # includes timeouts
                self.dead = f"no answer from {self.settings.url} ({_short(e)})"
                self.record({**call, "seconds": time.monotonic() - started, "ok": False, "error": self.dead})
                raise LLMUnavailable(self.dead) from None
            except openai.APIStatusError as e:
                self.record({**call, "seconds": time.monotonic() - started, "ok": False, "error": _short(e),
                             "response_text": _body(e)})
                if e.status_code in (401, 403):
                    self.dead = f"the server at {self.settings.url} refused the key ({e.status_code}): set api_key in reverie.toml or OPENAI_API_KEY"
                    raise LLMUnavailable(self.dead) from None
                if self.schema_ok and 400 <= e.status_code < 500 and e.status_code != 429:
                    self.schema_ok = False  # ask again for JSON in plain text
                    continue
                if e.status_code == 404:
                    self.dead = f"model {model!r} or the API path is unknown at {self.settings.url} (404): check --llm-url and --llm-model"
                    raise LLMUnavailable(self.dead) from None
                return "", None  # a 5xx or a rate limit: counts as one failed try
            except (ValueError, openai.APIResponseValidationError) as e:  # a body that is not JSON at all
                self.record({**call, "seconds": time.monotonic() - started, "ok": False,
                             "error": f"unreadable response: {_short(e)}"})
                return "", None
            usage = getattr(response, "usage", None)
            text = (response.choices[0].message.content if response.choices else "") or ""
            return text, {**call, "seconds": time.monotonic() - started, "response_text": text,
                          "prompt_tokens": getattr(usage, "prompt_tokens", None),
                          "completion_tokens": getattr(usage, "completion_tokens", None)}


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def _body(e: Exception) -> str:
    response = getattr(e, "response", None)
    try:
        return response.text[:4000] if response is not None else ""
    except Exception:  # a streamed or closed body: nothing worth keeping
        return ""
