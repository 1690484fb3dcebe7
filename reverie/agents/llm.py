"""LLM access: the `openai` client against any OpenAI-compatible server, answers checked by pydantic.

A JSON-schema `response_format` is tried first; a server that rejects it (a 4xx whose message is
about the schema or structured output) is asked again for plain JSON in the text, which is dug out of
the reply (```json fences and chatter allowed). Other 4xx answers end the LLM for the run with the
server's own message (an unknown model names the models the server lists). Malformed answers,
including a 200 whose body is not an OpenAI JSON reply at all (an HTML page), are retried a bounded
number of times. A connection failure or timeout marks
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
    max_tokens: int = 0  # 0: a bound per purpose (see max_tokens_for)
    backend: str = "auto"  # auto | server | encoder | off (see BACKENDS)
    path: str = ""  # a local Hugging Face causal-LM folder, run in this process
    unload: bool = False  # free the local model's memory after each call, for renders on little VRAM

    @property
    def configured(self) -> bool:
        """An LLM server is what writes the prompts."""
        if self.backend in ("encoder", "off") or self.path:
            return False
        return bool(self.base_url or self.api_key)

    @property
    def local(self) -> bool:
        """A causal LM in this process writes the prompts: the engine's text encoder or `path`."""
        return self.backend != "off" and (self.backend == "encoder" or bool(self.path))

    @property
    def url(self) -> str:
        return self.base_url or OPENAI_URL


BACKENDS = {
    "auto": "a server when one is configured, else the image model's own text encoder when it is a language model",
    "server": "an OpenAI-compatible server only",
    "encoder": "the image model's own text encoder (or [llm] path), even on the tiny engine",
    "off": "no LLM: the offline formula expander and rule critic",
}


def llm_settings(section: Optional[Mapping[str, Any]] = None, url: Optional[str] = None, model: Optional[str] = None,
                 env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None,
                 path: Optional[str] = None) -> LLMSettings:
    """CLI options win over the [llm] table of reverie.toml, which wins over OPENAI_* variables.

    The config file beats the environment because OPENAI_BASE_URL is often set for other tools,
    while reverie.toml is written for reverie alone. A bad backend or local model path is refused
    here, in one line, before anything loads.
    """
    from pathlib import Path

    from reverie.types import ReverieError

    section = dict(section or {})
    backend = str(section.get("backend", "auto"))
    if backend not in BACKENDS:
        raise ReverieError(f"[llm] backend = {backend!r} is unknown: use one of {', '.join(BACKENDS)}")
    local = str(path or section.get("path") or "")
    if local and not (Path(local).expanduser() / "config.json").is_file():
        raise ReverieError(f"the LLM path {local} is not a Hugging Face model folder (no config.json there): "
                           "pass --llm-path a folder such as /models/Qwen3-8B")
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
        timeout=float(timeout if timeout is not None else section.get("timeout", 60.0)),
        retries=max(0, int(section.get("retries", 2))),
        max_tokens=max(0, int(section.get("max_tokens", 0))),
        backend=backend,
        path=str(Path(local).expanduser()) if local else "",
        unload=bool(section.get("unload", False)),
    )


# Bounds on the reply length, per purpose: a constrained reply from a local model once ran to 1,200
# tokens of repetition. An expansion paragraph is 80-150 words (about 200 tokens) plus its reading;
# reasoning models that think aloud need `[llm] max_tokens` raised.
EXPAND_TOKENS_EACH = 400
MIN_TOKENS = {"expand": 600, "critique": 600, "chat": 400}


def max_tokens_for(settings: LLMSettings, purpose: str, k: int = 1) -> int:
    if settings.max_tokens:
        return settings.max_tokens
    if purpose == "expand":
        return max(MIN_TOKENS["expand"], 200 + EXPAND_TOKENS_EACH * k)
    return MIN_TOKENS.get(purpose, 600)


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
        recorder = record or (lambda call: None)
        self.record = lambda call: recorder({"backend": "server", **call})
        # Retries are ours (bounded, on malformed answers); the SDK's own retries would multiply
        # the wait on a dead server.
        self.client = openai.OpenAI(base_url=settings.url, api_key=settings.api_key or "not-needed",
                                    timeout=settings.timeout, max_retries=0)
        self.dead = ""  # why the server is not called any more, once it failed to answer
        self.schema_ok = True
        self._model = settings.model
        self._listed: Optional[list[str]] = None  # the server's /models, once asked

    @property
    def model(self) -> str:
        if not self._model:
            self._model = self._discover_model()
        return self._model

    def _list_models(self) -> list[str]:
        """The model ids the server lists; raises what the SDK raises, or MalformedReply."""
        try:
            return [str(m.id) for m in self.client.models.list()]
        except MALFORMED:  # a body that is not an OpenAI model list (an HTML page, a bare string)
            raise MalformedReply("its /models answer is not an OpenAI model list") from None

    def _discover_model(self) -> str:
        """No model configured: take the first one the server lists (Ollama, llama.cpp, LM Studio)."""
        import openai

        if self.dead:
            raise LLMUnavailable(self.dead)
        started = time.monotonic()
        call = {"purpose": "models", "model": "", "base_url": self.settings.url, "system_hash": "",
                "request_json": canonical_json({"path": "/models"}), "response_text": "", "error": ""}
        try:
            ids = self._list_models()
        except openai.APIConnectionError as e:
            self.dead = f"no answer from {self.settings.url} ({_short(e)}): is the server running? check --llm-url"
        except (openai.APIError, MalformedReply) as e:
            self.dead = (f"cannot list models at {self.settings.url} ({server_message(e)}): "
                         "pass --llm-model NAME, or check --llm-url")
        else:
            self._listed = ids
            self.record({**call, "seconds": time.monotonic() - started, "ok": bool(ids), "response_text": json.dumps(ids)})
            if not ids:
                self.dead = f"the server at {self.settings.url} lists no models: pass --llm-model NAME"
                raise LLMUnavailable(self.dead)
            return ids[0]
        self.record({**call, "seconds": time.monotonic() - started, "ok": False, "error": self.dead})
        raise LLMUnavailable(self.dead) from None

    def _known_models(self) -> list[str]:
        """The models the server lists, for a hint; [] when it will not say."""
        if self._listed is None:
            try:
                self._listed = self._list_models()
            except Exception:  # only a hint: the error that brought us here is the one to report
                self._listed = []
        return self._listed

    def structured(self, system: str, user: str | list[dict], schema: type[T], purpose: str, system_hash: str = "",
                   temperature: float = 0.8, check: Optional[Callable[[T], str]] = None,
                   json_schema: Optional[dict] = None, max_tokens: Optional[int] = None,
                   seed: Optional[int] = None) -> T:
        """Ask, parse and validate; retry malformed answers; raise LLMUnavailable when out of tries.

        `seed` is for local models (agents/local_llm.py); a server samples as it likes.

        `check` returns a complaint ("" when fine) for answers that parse but break a rule.
        `json_schema` is sent instead of the pydantic one when the checks need more than pydantic
        writes (an exact count, a field required for one action). `user` may be a list of content
        parts (text and image_url) for a vision model.
        """
        if self.dead:
            raise LLMUnavailable(self.dead)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        wire_schema = json_schema or schema.model_json_schema()
        limit = max_tokens or max_tokens_for(self.settings, purpose)
        problem = ""
        for _ in range(1 + self.settings.retries):
            text, call = self._complete(messages, schema.__name__, wire_schema, purpose, system_hash, temperature, limit)
            if call is None:  # the server failed this try; already recorded
                problem = self._last_error or "the server returned an error"
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

    _last_error = ""

    def _complete(self, messages: list[dict], name: str, wire_schema: dict, purpose: str, system_hash: str,
                  temperature: float, max_tokens: int) -> tuple[str, Optional[dict]]:
        """One chat completion: (text, the call to record) or ("", None) after a recorded server error."""
        import openai

        while True:
            model = self.model
            kwargs: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature,
                                      "max_tokens": max_tokens}
            if self.schema_ok:
                kwargs["response_format"] = {"type": "json_schema", "json_schema": {"name": name, "schema": wire_schema}}
            call = {"purpose": purpose, "model": model, "base_url": self.settings.url, "system_hash": system_hash,
                    "request_json": canonical_json(kwargs), "response_text": "", "error": ""}
            started = time.monotonic()
            try:
                response = self.client.chat.completions.create(**kwargs)
                text = _reply_text(response)
            except openai.APIConnectionError as e:  # includes timeouts
                self.dead = f"no answer from {self.settings.url} ({_short(e)})"
                self.record({**call, "seconds": time.monotonic() - started, "ok": False, "error": self.dead})
                raise LLMUnavailable(self.dead) from None
            except openai.APIStatusError as e:
                said = server_message(e)
                self.record({**call, "seconds": time.monotonic() - started, "ok": False,
                             "error": f"{e.status_code}: {said}", "response_text": _body(e)})
                status = e.status_code
                if status in (401, 403):
                    self.dead = (f"the server at {self.settings.url} refused the key ({status}: {said}): "
                                 "set api_key in reverie.toml or OPENAI_API_KEY")
                    raise LLMUnavailable(self.dead) from None
                if status in (400, 404, 422) and about_model(said):
                    self.dead = self._unknown_model(model, status, said)
                    raise LLMUnavailable(self.dead) from None
                if self.schema_ok and status in (400, 422) and about_schema(said):
                    self.schema_ok = False  # ask again for JSON in plain text
                    continue
                if status == 404:
                    self.dead = (f"the server at {self.settings.url} has no chat completions there (404: {said}): "
                                 "check --llm-url (it usually ends in /v1)")
                    raise LLMUnavailable(self.dead) from None
                if 400 <= status < 500 and status not in (408, 409, 429):
                    # The request itself is refused: asking again the same way cannot help.
                    self.dead = f"the server at {self.settings.url} refused the request ({status}: {said})"
                    raise LLMUnavailable(self.dead) from None
                self._last_error = f"the server returned {status}: {said}"
                return "", None  # a 5xx or a rate limit: counts as one failed try
            except NotJSON as e:  # a web page, not an API: no retry can change that
                self.dead = (f"the server at {self.settings.url} answered with {e}, not the OpenAI API: "
                             "check --llm-url (it usually ends in /v1)")
                self.record({**call, "seconds": time.monotonic() - started, "ok": False, "error": self.dead,
                             "response_text": e.body})
                raise LLMUnavailable(self.dead) from None
            except (openai.APIError, MalformedReply, *MALFORMED) as e:  # a body that is not a chat completion
                self._last_error = f"the reply is not an OpenAI chat completion ({_short(e)})"
                self.record({**call, "seconds": time.monotonic() - started, "ok": False, "error": self._last_error})
                return "", None
            usage = getattr(response, "usage", None)
            return text, {**call, "seconds": time.monotonic() - started, "response_text": text,
                          "prompt_tokens": _int_or_none(getattr(usage, "prompt_tokens", None)),
                          "completion_tokens": _int_or_none(getattr(usage, "completion_tokens", None))}

    def _unknown_model(self, model: str, status: int, said: str) -> str:
        known = [m for m in self._known_models() if m != model][:5]
        hint = ("pass --llm-model with one the server lists: " + ", ".join(known)) if known else \
            "pass --llm-model with a model the server has"
        return f"the server at {self.settings.url} does not know model {model!r} ({status}: {said}): {hint}"


class MalformedReply(ValueError):
    """A 200 whose body is not what an OpenAI-compatible server sends."""


class NotJSON(MalformedReply):
    """A 200 whose body is not JSON at all: an HTML page at a mistyped URL."""

    def __init__(self, body: str):
        self.body = body[:4000]
        html = body.lstrip()[:200].lower().startswith(("<!doctype", "<html", "<"))
        super().__init__("an HTML page" if html else f"text that is not JSON ({_snippet(body, 60)})")


# What a body that is not an OpenAI reply raises once the SDK hands it over: the SDK returns a bare
# str for a non-JSON 200 (an HTML page), and a JSON of the wrong shape has missing or odd fields.
MALFORMED: tuple[type[Exception], ...] = (AttributeError, TypeError, KeyError, IndexError, ValueError)


def _reply_text(response: Any) -> str:
    if isinstance(response, (str, bytes)):  # the SDK hands over a non-JSON body as is
        raise NotJSON(response.decode("utf-8", "replace") if isinstance(response, bytes) else response)
    choices = response.choices
    if not choices:
        raise MalformedReply("the reply has no choices")
    content = choices[0].message.content
    if content is not None and not isinstance(content, str):
        raise MalformedReply(f"the message content is a {type(content).__name__}, not text")
    return content or ""


def _int_or_none(value: Any) -> Optional[int]:
    return value if isinstance(value, int) else None


_SCHEMA_WORDS = re.compile(r"response_format|json_schema|json schema|structured|grammar|schema|guided", re.I)
_MODEL_WORDS = re.compile(r"\bmodel\b.*(not found|unknown|does not exist|doesn't exist|not exist|no such|invalid|"
                          r"not available|unavailable|not loaded|is not)|(unknown|invalid|no such) model|"
                          r"model_not_found", re.I | re.S)


def about_schema(message: str) -> bool:
    return bool(_SCHEMA_WORDS.search(message))


def about_model(message: str) -> bool:
    return bool(_MODEL_WORDS.search(message)) and not about_schema(message)


def server_message(e: Exception) -> str:
    """The server's own words, one line: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the text."""
    body = getattr(e, "body", None)
    said: Any = None
    if isinstance(body, dict):
        said = body.get("error", body.get("detail", body.get("message")))
        if isinstance(said, dict):
            said = said.get("message") or said.get("msg") or json.dumps(said)
        elif isinstance(said, list) and said and isinstance(said[0], dict):  # FastAPI's validation list
            said = said[0].get("msg")
    elif isinstance(body, str):
        said = body
    if not said:
        response = getattr(e, "response", None)
        try:
            said = response.text if response is not None else ""
        except Exception:  # a closed body: the exception's own words will do
            said = ""
    return _snippet(said or (getattr(e, "message", "") or str(e)))


def _snippet(text: Any, limit: int = 160) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def _body(e: Exception) -> str:
    response = getattr(e, "response", None)
    try:
        return response.text[:4000] if response is not None else ""
    except Exception:  # a streamed or closed body: nothing worth keeping
        return ""
