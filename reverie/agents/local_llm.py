"""The dreamer on a local causal LM: the image model's own text encoder, or any Hugging Face folder.

Z-Image's text encoder is Qwen3-4B, a chat model whose output head is its input embeddings. A
`Qwen3ForCausalLM` built around the loaded encoder, with its head tied to the encoder's embedding
tensor (the same storage, no copy), writes prompts with no LLM server and no extra memory. Any
causal-LM folder (`[llm] path`, `--llm-path`) runs the same way.

JSON answers are constrained by llguidance: its grammar, compiled from the answer's JSON schema,
masks every token that could not continue a valid answer, inside transformers' own `generate`.
Every string gets a length bound, and the token bound covers them all, so an answer in ASCII text
always closes within the bound, even from random weights. Sampling is seeded and each call is
handed to `record` with its backend, model, seed and token counts.
"""

from __future__ import annotations

import copy
import gc
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from pydantic import BaseModel

from reverie.agents.llm import LLMSettings, LLMUnavailable, RecordFn, parse_reply
from reverie.types import ProgressFn, ReverieError, Writing, canonical_json, sha256_text

T = TypeVar("T", bound=BaseModel)

# Qwen3's advice for answers without thinking; the caller's temperature replaces theirs.
TOP_P = 0.8
TOP_K = 20
# Length bounds per string field of an answer, in characters: a prompt paragraph of 80-150 words
# fits in PROMPT_CHARS. A field not named here gets OTHER_CHARS.
FIELD_CHARS = {"prompt": 1000, "negative": 400, "interpretation": 160, "reason": 300, "idea": 300}
OTHER_CHARS = 200
MAX_ITEMS = 8  # for a list the schema leaves open
FREE_TEXT_TOKENS = 400
PROGRESS_EVERY = 0.5  # seconds between "writing the prompt…" updates


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    finished: bool  # False when the token or time bound cut the answer short


def can_generate(text_encoder: Any) -> str:
    """Why this text encoder cannot be run as a language model ("" when it can): it needs a
    causal-LM class for its architecture and an output head tied to its embeddings (a bare
    encoder carries no other head)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    config = getattr(text_encoder, "config", None)
    if config is None or type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        return f"its text encoder ({type(text_encoder).__name__}) is no causal language model"
    if not getattr(config, "tie_word_embeddings", False):
        return f"its text encoder ({type(text_encoder).__name__}) has no output head tied to its embeddings"
    if not hasattr(text_encoder, "get_input_embeddings"):
        return f"its text encoder ({type(text_encoder).__name__}) has no embeddings to write with"
    return ""


def causal_lm_over(text_encoder: Any):
    """A causal LM around a loaded base model: its layers are the encoder's, its output head is
    the encoder's embedding Parameter itself. Built on the meta device, so nothing is allocated."""
    import torch
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    problem = can_generate(text_encoder)
    if problem:
        raise ReverieError(f"cannot write prompts with this model: {problem}")
    config = copy.deepcopy(text_encoder.config)
    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    with torch.device("meta"):
        lm = cls(config)
    lm.model = text_encoder
    lm.lm_head.weight = text_encoder.get_input_embeddings().weight
    return lm.eval()


def bounded_schema(schema: dict) -> dict:
    """The schema with a maxLength on every free string, named for its property (see FIELD_CHARS),
    a maxItems on every list, and no keys beyond those named."""

    def walk(node: Any, name: str = "") -> Any:
        if isinstance(node, list):
            return [walk(n, name) for n in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                out[key] = {prop: walk(sub, prop) for prop, sub in value.items()}
            elif key in ("items", "oneOf", "anyOf", "allOf", "$defs", "definitions"):
                out[key] = ({k: walk(v) for k, v in value.items()} if isinstance(value, dict) and key in ("$defs", "definitions")
                            else walk(value, name))
            else:
                out[key] = value
        if "properties" in out:  # other keys would be strings without a bound
            out.setdefault("additionalProperties", False)
        if out.get("type") == "array":
            out.setdefault("maxItems", MAX_ITEMS)
        if out.get("type") == "string" and "enum" not in out and "const" not in out:
            limit = FIELD_CHARS.get(name, OTHER_CHARS)
            out["maxLength"] = min(int(out.get("maxLength", limit)), limit)
        return out

    return walk(schema)


def longest_answer(schema: dict) -> int:
    """An upper bound on the characters of any answer the bounded schema allows (no whitespace
    between tokens): the number of tokens that always lets an ASCII answer close."""

    def size(node: Any, defs: dict) -> int:
        if not isinstance(node, dict):
            return 16
        if "$ref" in node:
            return size(defs.get(node["$ref"].split("/")[-1], {}), defs)
        branches = node.get("oneOf") or node.get("anyOf")
        if branches:
            return max(size(b, defs) for b in branches)
        if "enum" in node or "const" in node:
            values = node.get("enum", [node.get("const")])
            return max(len(json.dumps(v)) for v in values)
        kind = node.get("type")
        if kind == "string":
            return 2 + int(node.get("maxLength", OTHER_CHARS)) * 2  # an escaped character is two
        if kind == "array":
            count = int(node.get("maxItems", MAX_ITEMS))
            return 2 + count * (1 + size(node.get("items", {}), defs))
        if kind == "object":
            props = node.get("properties", {})
            return 2 + sum(len(json.dumps(k)) + 2 + size(v, defs) for k, v in props.items())
        return 24  # a number, a boolean or null

    return size(schema, schema.get("$defs", {}))


class GrammarProcessor:
    """A transformers logits processor: tokens llguidance forbids get -inf, then top-k and top-p
    pick among what is left (run after the mask, so they never leave nothing to sample)."""

    def __init__(self, matcher, top_k: int = TOP_K, top_p: float = TOP_P):
        from transformers import TopKLogitsWarper, TopPLogitsWarper

        self.matcher = matcher
        self.started = False
        self.warpers = [TopKLogitsWarper(top_k=top_k), TopPLogitsWarper(top_p=top_p)]

    def __call__(self, input_ids, scores):
        import torch

        if self.started:
            self.matcher.consume_token(int(input_ids[0, -1]))
        self.started = True
        if self.matcher.is_error():
            raise LLMUnavailable(f"the answer left its grammar ({self.matcher.get_error()})")
        bias = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8)
        allowed = torch.zeros(scores.shape[-1], dtype=torch.bool)
        n = min(len(bias), scores.shape[-1])
        allowed[:n] = bias[:n] > 0
        scores = scores.masked_fill(~allowed.to(scores.device), float("-inf"))
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        return scores


class Warpers:
    """Top-k and top-p for free text, applied by us so that every call samples the same way."""

    def __init__(self, top_k: int = TOP_K, top_p: float = TOP_P):
        from transformers import TopKLogitsWarper, TopPLogitsWarper

        self.warpers = [TopKLogitsWarper(top_k=top_k), TopPLogitsWarper(top_p=top_p)]

    def __call__(self, input_ids, scores):
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        return scores


class _Rate:
    """A transformers streamer that counts new tokens and reports tokens per second."""

    def __init__(self, progress: ProgressFn, purpose: str):
        self.progress, self.purpose = progress, purpose
        self.tokens = 0
        self.started = time.monotonic()
        self._prompt_seen = False
        self._said = 0.0

    def put(self, value) -> None:
        if not self._prompt_seen:  # the first call hands over the prompt
            self._prompt_seen = True
            return
        self.tokens += int(value.numel())
        now = time.monotonic()
        if now - self._said >= PROGRESS_EVERY:
            self._said = now
            self._say()

    def end(self) -> None:
        self._say()

    def _say(self) -> None:
        seconds = max(time.monotonic() - self.started, 1e-6)
        self.progress(Writing(purpose=self.purpose, tokens=self.tokens, tokens_per_second=self.tokens / seconds))


Loader = Callable[[], tuple[Any, Any]]  # () -> (causal LM, tokenizer)


def folder_loader(path: str) -> Loader:
    """Any Hugging Face causal-LM folder: on the GPU in bfloat16 when there is one, else the CPU."""

    def load():
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # Load bars and length warnings would break reverie's own progress lines.
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        cuda = torch.cuda.is_available()
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if cuda else torch.float32)
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ReverieError(f"cannot load the LLM at {path} ({first[:200]}): pass --llm-path a Hugging Face "
                               "causal-LM folder (config.json, weights, tokenizer)") from None
        return model.to("cuda" if cuda else "cpu").eval(), tokenizer

    return load


def encoder_loader(pipeline: Callable[[], Any]) -> Loader:
    """The loaded pipeline's own text encoder as a causal LM, around the very same tensors."""

    def load():
        pipe = pipeline()
        return causal_lm_over(pipe.text_encoder), pipe.tokenizer

    return load


class LocalLLM:
    """The LLM interface the dreamer and the critic use (`structured`, `model`, `settings`),
    over a causal LM in this process. Calls take turns: one model, one generation at a time."""

    def __init__(self, settings: LLMSettings, load: Loader, *, backend: str, model: str,
                 record: Optional[RecordFn] = None, progress: Optional[ProgressFn] = None,
                 keep_loaded: Optional[bool] = None, runner: Optional[Callable[[Callable[[], Any]], Any]] = None):
        self.settings = settings
        # Where generation runs: here, or (the engine's own encoder) on the engine's thread, taking
        # turns with rendering.
        self.runner = runner or (lambda fn: fn())
        self.backend = backend
        self.model = model
        self._load = load
        self.record = record or (lambda call: None)
        self.progress = progress or (lambda event: None)
        # The encoder's weights belong to the engine: unloading ours frees only the wrapper.
        self.keep_loaded = (not settings.unload) if keep_loaded is None else keep_loaded
        self.dead = ""
        self.loads = 0  # how many times the model was loaded (unload = true reloads it per call)
        self._lm = None
        self._tokenizer = None
        self._ll_tokenizers: dict[int, Any] = {}
        self._lock = threading.Lock()

    # -- the model ---------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._lm is not None

    def _model(self):
        if self._lm is None:
            self._lm, self._tokenizer = self._load()
            self.loads += 1
        return self._lm, self._tokenizer

    def unload(self) -> None:
        """Free the model's memory (before rendering, for little VRAM); the next call reloads it."""
        self._lm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # no torch: nothing was on a GPU
            pass

    def _grammar_tokenizer(self, tokenizer, vocab_size: int):
        from llguidance.hf import from_tokenizer

        key = id(tokenizer)
        if key not in self._ll_tokenizers:  # about a second for a real vocabulary: once per tokenizer
            self._ll_tokenizers[key] = from_tokenizer(tokenizer, n_vocab=vocab_size)
        return self._ll_tokenizers[key]

    # -- generation --------------------------------------------------------------------------
    def generate(self, messages: list[dict], *, schema: Optional[dict], temperature: float, max_new_tokens: int,
                 seed: int, purpose: str) -> Generation:
        """One seeded sample, constrained to `schema` when one is given, within the token and time bounds."""
        import torch
        from llguidance import LLMatcher
        from transformers import LogitsProcessorList

        lm, tokenizer = self._model()
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=False)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        device = lm.get_input_embeddings().weight.device
        input_ids = ids["input_ids"].to(device)
        vocab = lm.get_output_embeddings().weight.shape[0]
        if schema is not None:
            grammar = LLMatcher.grammar_from_json_schema(
                schema, defaults={"whitespace_flexible": False, "coerce_one_of": True})
            matcher = LLMatcher(self._grammar_tokenizer(tokenizer, vocab), grammar, log_level=0)
            if matcher.is_error():
                raise LLMUnavailable(f"llguidance cannot compile the answer's schema ({matcher.get_error()})")
            processor = GrammarProcessor(matcher)
        else:
            processor = Warpers()
        stops = [t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
                 if isinstance(t, int) and 0 <= t < vocab]
        rate = _Rate(self.progress, purpose)
        started = time.monotonic()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
            torch.manual_seed(seed)
            out = lm.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
                              temperature=max(float(temperature), 0.05), top_k=0, top_p=1.0,
                              max_new_tokens=max_new_tokens, max_time=self.settings.timeout,
                              logits_processor=LogitsProcessorList([processor]), eos_token_id=stops,
                              pad_token_id=stops[0] if stops else None, streamer=rate)
        new = out[0, input_ids.shape[1]:].tolist()
        finished = bool(new) and new[-1] in stops
        if schema is not None:
            finished = finished or processor.matcher.is_stopped()
        answer = tokenizer.decode(new, skip_special_tokens=True)
        return Generation(text=answer, prompt_tokens=int(input_ids.shape[1]), completion_tokens=len(new),
                          seconds=time.monotonic() - started, finished=finished)

    def _call(self, messages: list[dict], *, schema: Optional[dict], temperature: float, max_new_tokens: int,
              seed: int, purpose: str, system_hash: str) -> tuple[Generation, dict]:
        request = {"messages": messages, "schema": schema, "thinking": False,
                   "sampling": {"temperature": temperature, "top_k": TOP_K, "top_p": TOP_P, "seed": seed,
                                "max_new_tokens": max_new_tokens, "max_seconds": self.settings.timeout}}
        call = {"purpose": purpose, "model": self.model, "base_url": "", "backend": self.backend, "seed": seed,
                "system_hash": system_hash, "request_json": canonical_json(request), "response_text": "", "error": ""}
        try:
            made = self.runner(lambda: self.generate(messages, schema=schema, temperature=temperature,
                                                     max_new_tokens=max_new_tokens, seed=seed, purpose=purpose))
        except (ReverieError, RuntimeError) as e:  # cannot load or run (out of memory): no later call can do better
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            self.dead = first if isinstance(e, ReverieError) else f"{self.model} failed to generate ({first})"
            self.record({**call, "seconds": 0.0, "ok": False, "error": self.dead})
            raise LLMUnavailable(self.dead) from None
        except LLMUnavailable as e:  # the grammar could not be compiled or followed: this call only
            self.record({**call, "seconds": 0.0, "ok": False, "error": str(e)})
            raise
        return made, {**call, "seconds": made.seconds, "response_text": made.text,
                      "prompt_tokens": made.prompt_tokens, "completion_tokens": made.completion_tokens}

    def structured(self, system: str, user: str, schema: type[T], purpose: str, system_hash: str = "",
                   temperature: float = 0.8, check: Optional[Callable[[T], str]] = None,
                   json_schema: Optional[dict] = None, max_tokens: Optional[int] = None,
                   seed: Optional[int] = None) -> T:
        """As LLMClient.structured: parse, validate, retry with a new seed, or LLMUnavailable.

        `max_tokens` from the caller is a bound for servers that write freely; here the bound is
        what the bounded schema needs (or `[llm] max_tokens` when set).
        """
        if self.dead:
            raise LLMUnavailable(self.dead)
        wire = bounded_schema(json_schema or schema.model_json_schema())
        limit = self.settings.max_tokens or longest_answer(wire) + 8
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        first = seed if seed is not None else int(sha256_text(system + "\x00" + user)[:8], 16)
        problem = ""
        with self._lock:
            try:
                for attempt in range(1 + self.settings.retries):
                    made, call = self._call(messages, schema=wire, temperature=temperature, max_new_tokens=limit,
                                            seed=(first + attempt) % 2**31, purpose=purpose, system_hash=system_hash)
                    try:
                        answer = parse_reply(made.text, schema)
                        problem = check(answer) if check else ""
                    except ValueError as e:
                        problem = str(e) if made.finished else (
                            f"the answer was cut short at {made.completion_tokens} tokens or "
                            f"{self.settings.timeout:g} s (raise [llm] max_tokens or timeout)")
                    self.record({**call, "ok": not problem, "error": problem})
                    if not problem:
                        return answer
            finally:
                if not self.keep_loaded:
                    self.unload()
        raise LLMUnavailable(f"{self.model} gave no usable answer in {1 + self.settings.retries} tries ({problem})")

    def text(self, system: str, user: str, purpose: str, system_hash: str = "", temperature: float = 0.8,
             max_tokens: Optional[int] = None, seed: Optional[int] = None) -> str:
        """Free text, where that is all a caller needs; LLMUnavailable when nothing comes back."""
        if self.dead:
            raise LLMUnavailable(self.dead)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        seed = seed if seed is not None else int(sha256_text(system + "\x00" + user)[:8], 16)
        with self._lock:
            try:
                made, call = self._call(messages, schema=None, temperature=temperature,
                                        max_new_tokens=self.settings.max_tokens or max_tokens or FREE_TEXT_TOKENS,
                                        seed=seed, purpose=purpose, system_hash=system_hash)
            finally:
                if not self.keep_loaded:
                    self.unload()
        ok = bool(made.text.strip())
        self.record({**call, "ok": ok, "error": "" if ok else "an empty answer"})
        if not ok:
            raise LLMUnavailable(f"{self.model} wrote nothing")
        return made.text.strip()
