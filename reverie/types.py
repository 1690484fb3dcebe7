"""The small shared types that cross package boundaries.

agents, render, scoring and store import only this module from each other's world, so these
types stay frozen, plain and JSON-serialisable. ReverieError is defined in reverie.errors (below
reverie.profiles, which raises it) and imported from here everywhere else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, Literal, Optional, Protocol, Sequence

from reverie.errors import ReverieError as ReverieError  # the spelling everyone imports
from reverie.profiles import DEFAULT_PROFILE

ControlKind = Literal["auto", "canny", "depth", "pose", "img2img"]
CONTROL_KINDS: tuple[str, ...] = ("auto", "canny", "depth", "pose", "img2img")
ExpansionSource = Literal["user", "dreamer", "formula", "critic"]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Reference:
    """An image the user gives to steer a render: path, control kind and strength."""

    path: str
    control: str = "auto"
    strength: float = 0.8


@dataclass(frozen=True)
class Source:
    """The image an edit starts from: its bytes' sha256 (its identity), where this machine keeps
    it, and the render it is when it came from this home. The instruction is the spec's prompt's
    origin, kept here too so an image alone says what it was asked to change."""

    image_sha: str
    image_path: str
    width: int
    height: int
    instruction: str = ""
    render_id: Optional[int] = None
    # How far an img2img editor may move from the source (diffusers' `strength`); instruction
    # editors take the whole source as a reference and ignore it.
    strength: float = 0.6
    mask_sha: str = ""
    mask_path: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """What decides the pixels: not where the files are kept, nor which row the source was."""
        return {k: v for k, v in asdict(self).items() if k not in ("image_path", "mask_path", "render_id")}

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> Optional["Source"]:
        if not d:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Request:
    idea: str
    n: int = 4
    rounds: int = 2
    target: Optional[float] = None
    aspect: str = "1:1"
    megapixels: float = 1.0
    profile: str = DEFAULT_PROFILE
    references: tuple[Reference, ...] = ()
    seed: Optional[int] = None
    # Variety knobs; None means "the profile's default".
    shift: Optional[float] = None
    blind_steps: int = 0
    steps: Optional[int] = None
    max_seconds: Optional[float] = None
    max_renders: Optional[int] = None  # a render budget that need not be a multiple of n (batch --per-prompt)
    embed_noise: float = 0.0  # noise on the text embeddings from the first round (RenderSpec.embed_noise)
    handoff_steps: int = 0  # first steps on the base model from the first round (RenderSpec.handoff_steps)
    diversity: Optional[float] = None  # the kept set's MMR weight (scoring.portfolio); None: the home's
    source: Optional[Source] = None  # an edit: every render starts from this image; the idea is the instruction
    # How later rounds pick their starting noise: "seeds" re-rolls seeds; "noise" searches the
    # low-frequency part of the initial noise (orchestrator.noise_search).
    search: str = "seeds"
    # With --search noise: each seed's round first previews noise_search.PREVIEW_CANDIDATES
    # candidate components at this many steps, and renders in full only the best one (0: off).
    preview_steps: int = 0
    # The controls a ComfyUI user sets by hand; None means "the profile's default". cfg is the
    # CFG scale as ComfyUI and A1111 write it (not diffusers' guidance).
    cfg: Optional[float] = None
    negative: Optional[str] = None
    sampler: Optional[str] = None
    exact: bool = False  # render the idea verbatim: no expansion, no critic rewrite
    # (idea, prompt, negative) of the chat turn this request follows up: its first round revises
    # that prompt instead of expanding the idea afresh, so the medium, palette and style stay.
    revises: Optional[tuple[str, str, str]] = None
    # A named style from reverie.toml's [styles.NAME], resolved: (name, prompt template with
    # "{prompt}", negative). The expander's prompt is poured into it, as Fooocus does.
    style: Optional[tuple[str, str, str]] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["references"] = [asdict(r) for r in self.references]
        if d["source"] is None:  # left out for text-to-image, so older request hashes stay the same
            del d["source"]
        # Left out while unset, so the hash of a request made before the field existed (the key
        # that resumes an unfinished run) stays the same.
        for key in ("max_renders", "diversity", "cfg", "negative", "sampler", "revises", "style"):
            if d[key] is None:
                del d[key]
        for key in ("embed_noise", "exact", "handoff_steps", "preview_steps"):
            if not d[key]:
                del d[key]
        if d["search"] == "seeds":
            del d["search"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Request":
        d = dict(d)
        d["references"] = tuple(Reference(**r) for r in d.get("references", ()))
        d["source"] = Source.from_dict(d.get("source"))
        for key in ("revises", "style"):
            if d.get(key):
                d[key] = tuple(d[key])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class Expansion:
    prompt: str
    negative: str = ""
    source: str = "formula"
    model: str = ""
    system_hash: str = ""
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Control:
    """A preprocessed control image, stored content-addressed, with its kind and strength."""

    kind: str
    image_sha: str
    image_path: str
    strength: float = 0.8


@dataclass(frozen=True)
class RenderSpec:
    """Everything an engine needs to reproduce one image. Its canonical JSON hash identifies it."""

    prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    profile: str
    negative: str = ""
    sampler: str = "euler"
    shift: Optional[float] = None
    blind_steps: int = 0
    control: Optional[Control] = None
    # Seeded Gaussian noise added to the positive text embeddings, as a share of their standard
    # deviation (the third variety knob, after shift and blind steps): 0 is off.
    embed_noise: float = 0.0
    # An edit: the image this render starts from (and its mask), with the instruction.
    source: Optional[Source] = None
    # The lowest spatial frequencies of each latent channel's initial noise, set by noise-space
    # search (orchestrator.noise_search): channel-major, side x side orthonormal DCT coefficients
    # per channel. Empty: the seed's noise as drawn.
    noise_lowfreq: tuple[float, ...] = ()
    # Model files chosen over the profile's (ComfyUI's --comfy-file), as sorted (role, file name)
    # pairs: they make other pixels, so they are part of the recipe and of its hash.
    model_files: tuple[tuple[str, str], ...] = ()
    # The first this many denoising steps run on the profile's undistilled base model
    # (profiles.HANDOFF_BASES) at the base's CFG, the rest on the profile's own: the fourth variety
    # knob. 0 is off.
    handoff_steps: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["handoff_steps"]:  # off: left out, so specs from before the knob keep their hashes
            del d["handoff_steps"]
        if not d["embed_noise"]:  # off: left out, so specs (and their hashes) from before the knob stay the same
            del d["embed_noise"]
        if d["source"] is None:  # as embed_noise: text-to-image specs keep their hashes
            del d["source"]
        if d["noise_lowfreq"]:
            d["noise_lowfreq"] = list(d["noise_lowfreq"])
        else:  # as embed_noise: specs from before the field keep their hashes
            del d["noise_lowfreq"]
        if d["model_files"]:
            d["model_files"] = dict(d["model_files"])
        else:  # the profile's own files: left out, for the same reason
            del d["model_files"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RenderSpec":
        d = dict(d)
        if d.get("control"):
            d["control"] = Control(**d["control"])
        d["source"] = Source.from_dict(d.get("source"))
        d["noise_lowfreq"] = tuple(float(v) for v in d.get("noise_lowfreq") or ())
        if d.get("model_files"):
            d["model_files"] = tuple(sorted(dict(d["model_files"]).items()))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @property
    def sha(self) -> str:
        # image_path is where this machine keeps the control image, not part of its identity.
        d = self.to_dict()
        if d.get("control"):
            d["control"] = {k: v for k, v in d["control"].items() if k != "image_path"}
        if self.source is not None:
            d["source"] = self.source.identity()
        return sha256_text(canonical_json(d))

    def with_(self, **changes: Any) -> "RenderSpec":
        return replace(self, **changes)


@dataclass
class EngineOutput:
    """What an engine hands back for one spec: a PIL image, or an error saying why not."""

    spec: RenderSpec
    image: Any  # PIL.Image.Image | None
    engine: str
    engine_version: str
    seconds: float
    error: str = ""
    # Which machine made it: "local" for in-process engines, a ComfyUI server's URL and version.
    worker: str = ""
    # The weights that made it, as PNG Info and civitai should credit them, and the libraries
    # whose versions change the pixels; engines that do not know leave them empty.
    model: str = ""
    model_hash: str = ""
    runtime: dict = field(default_factory=dict)
    # How many seeds shared the forward pass that made it (padding included): its pixels depend
    # on that shape, so the PNG records it and `reproduce` renders in a batch of the same size.
    batch_size: Optional[int] = None
    # The CFG scale the engine ran, where it differs from the spec's guidance read as CFG
    # (ComfyUI runs FLUX at CFG 1 with the guidance in FluxGuidance); None: the spec's own.
    cfg: Optional[float] = None


@dataclass(frozen=True)
class Scores:
    values: dict[str, float]
    composite: float
    scorer: str
    details: dict[str, Any] = field(default_factory=dict)
    # An embedding for near-duplicate detection (CLIP image embedding, or a tiny pixel
    # signature for the heuristic scorer). Not stored in the database.
    embedding: Optional[tuple[float, ...]] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Render:
    """A stored render: its row id, where the PNG is, its hash, spec, engine and scores."""

    id: int
    run_id: str
    prompt_id: int
    round: int
    spec: RenderSpec
    path: str
    sha256: str
    engine: str
    seconds: float
    scores: Optional[Scores] = None

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def prompt(self) -> str:
        return self.spec.prompt


@dataclass(frozen=True)
class Event:
    """A progress event. The CLI draws bars from these; the API yields them."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[Event], None]


def no_progress(event: Event) -> None:
    return None


OutputFn = Callable[[EngineOutput], None]


class Engine(Protocol):
    """The one small engine interface; engines are built by name in reverie.render.registry."""

    name: str
    version: str
    # What decides the pixels beyond the spec (weights, dtype, model files). A resumed run keeps
    # it, so one run never mixes images from two models.
    identity: str

    def render(self, specs: Sequence[RenderSpec], progress: ProgressFn | None = None,
               on_output: OutputFn | None = None) -> list[EngineOutput]:
        """Render a batch of specs; return one output per spec, in order.

        `on_output` is called on the calling thread with each output as soon as it is ready
        (in order of completion, once per spec), so the caller can store and score it while the
        engine renders the next; whatever was handed on survives an exception later in the call.
        """
        ...

    def close(self) -> None: ...


# -- typed progress events ---------------------------------------------------------------------
# Each kind of progress is a dataclass with named fields. They are Events: `kind` and `data` are
# derived from the fields, so the CLI's bars, serve's SSE and anything reading `event.data[...]`
# see exactly what they saw before, and new code can match on the class instead.
@dataclass(frozen=True, kw_only=True)
class TypedEvent(Event):
    KIND: ClassVar[str] = ""  # the event's kind string
    OPTIONAL: ClassVar[tuple[str, ...]] = ()  # fields left out of `data` while None
    RENAMED: ClassVar[dict[str, str]] = {}  # field -> its key in `data`, where the two differ

    kind: str = field(default="", init=False)
    data: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        data = {}
        for f in fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            data[self.RENAMED.get(f.name, f.name)] = value
        object.__setattr__(self, "kind", self.KIND)
        object.__setattr__(self, "data", data)


def _kind(name: str, optional: tuple[str, ...] = (), renamed: Optional[dict] = None):
    def mark(cls):
        cls.KIND, cls.OPTIONAL, cls.RENAMED = name, optional, renamed or {}
        return cls
    return mark


# In a batch, the events of one idea's run carry `index`: which idea (0-based) they came from.
@_kind("notice", optional=("index",))
@dataclass(frozen=True, kw_only=True)
class Notice(TypedEvent):
    """A line for the person, said once per studio."""
    message: str
    index: Optional[int] = None


@_kind("loading")
@dataclass(frozen=True, kw_only=True)
class Loading(TypedEvent):
    """Something slow to import or build is on its way (the engine for a profile)."""
    what: str
    profile: str


@_kind("run_started")
@dataclass(frozen=True, kw_only=True)
class RunStarted(TypedEvent):
    run_id: str
    idea: str
    profile: str
    engine: str
    width: int
    height: int
    n: int
    rounds: int
    budget: int


@_kind("expanded", optional=("index",))
@dataclass(frozen=True, kw_only=True)
class Expanded(TypedEvent):
    """A round's prompt was written (by the expander, or the critic's revision)."""
    round: int
    prompt_id: int
    source: str
    prompt: str
    parent_id: Optional[int]
    index: Optional[int] = None


# Its data key is "control", not "kind": serve sends events as `{"kind": kind, **data}`, where a
# "kind" in data would overwrite the event's own.
@_kind("control", optional=("index",), renamed={"control_kind": "control"})
@dataclass(frozen=True, kw_only=True)
class ControlPrepared(TypedEvent):
    """A reference was preprocessed into a control image (data key "control": canny, depth, ...)."""
    control_kind: str
    image_sha: str
    path: str
    index: Optional[int] = None


@_kind("round_started")
@dataclass(frozen=True, kw_only=True)
class RoundStarted(TypedEvent):
    round: int
    n: int
    todo: int


@_kind("rendered")
@dataclass(frozen=True, kw_only=True)
class Rendered(TypedEvent):
    """An image (or a failed render) was stored."""
    round: int
    render_id: int
    seed: int
    seconds: float
    error: Optional[str]


@_kind("scored")
@dataclass(frozen=True, kw_only=True)
class Scored(TypedEvent):
    round: int
    count: int
    scorer: str
    best: Optional[float]


@_kind("judged", optional=("similarity", "diversity", "embed_noise", "shift", "blind_steps", "handoff_steps", "index"))
@dataclass(frozen=True, kw_only=True)
class Judged(TypedEvent):
    """The critic's decision after a round (decision "finish" carries only the first four)."""
    round: int
    best: float
    decision: str
    reason: str
    similarity: Optional[float] = None
    diversity: Optional[float] = None
    embed_noise: Optional[float] = None
    shift: Optional[float] = None
    blind_steps: Optional[int] = None
    handoff_steps: Optional[int] = None
    index: Optional[int] = None


@_kind("previewed")
@dataclass(frozen=True, kw_only=True)
class Previewed(TypedEvent):
    """Noise search rendered short previews of the round's candidates and kept each seed's best."""
    round: int
    previews: int
    steps: int
    cost_in_renders: float  # what the previews cost, counted in full renders
    best: Optional[float]


@_kind("repair")
@dataclass(frozen=True, kw_only=True)
class Repair(TypedEvent):
    """The critic sends the run's best image to the editor with an instruction."""
    round: int
    render_id: int
    instruction: str
    reason: str


@_kind("vlm_judged")
@dataclass(frozen=True, kw_only=True)
class VlmJudged(TypedEvent):
    """The VLM judge chose among the top candidates (final: the run's pick)."""
    final: bool
    render_id: int
    rank: int
    of: int
    reason: str
    problems: str
    model: str


@_kind("finished")
@dataclass(frozen=True, kw_only=True)
class Finished(TypedEvent):
    run_id: str
    reason: str


@_kind("result")
@dataclass(frozen=True, kw_only=True)
class Result(TypedEvent):
    """The last event of `Studio.stream`: the MakeResult."""
    result: Any


@_kind("batch_started")
@dataclass(frozen=True, kw_only=True)
class BatchStarted(TypedEvent):
    batch_id: str
    total: Optional[int]
    done: int
    resumed: bool
    hours: Optional[float]
    seconds_left: Optional[float]
    items: list


@_kind("batch_progress")
@dataclass(frozen=True, kw_only=True)
class BatchProgress(TypedEvent):
    done: int
    total: Optional[int]
    images_per_minute: float
    eta_seconds: Optional[float]
    best: Optional[float]
    items: list


@_kind("batch_finished")
@dataclass(frozen=True, kw_only=True)
class BatchFinished(TypedEvent):
    batch_id: str
    report: str
    reason: str
    renders: int


@_kind("engine_image", optional=("server", "error"))
@dataclass(frozen=True, kw_only=True)
class EngineImage(TypedEvent):
    """The engine finished one image (before the orchestrator stores it)."""
    seed: int
    seconds: float
    server: Optional[str] = None
    error: Optional[str] = None


@_kind("engine_progress")
@dataclass(frozen=True, kw_only=True)
class EngineProgress(TypedEvent):
    """A ComfyUI server's step count for the seed it is rendering."""
    seed: int
    step: Optional[int]
    steps: Optional[int]
    server: str


@_kind("queued")
@dataclass(frozen=True, kw_only=True)
class Queued(TypedEvent):
    """Our prompts wait behind `ahead` others in a shared ComfyUI server's queue (sent on each change)."""
    server: str
    ahead: int
    seed: int
    message: str


@_kind("step")
@dataclass(frozen=True, kw_only=True)
class Step(TypedEvent):
    """One denoising step of the batch rendering now; every few steps (when asked) a preview of its
    first image: a small PNG data URL made from the latents (reverie/render/preview.py)."""
    step: int
    steps: int
    seeds: list[int]
    preview: Optional[str] = None


@_kind("download_started")
@dataclass(frozen=True, kw_only=True)
class DownloadStarted(TypedEvent):
    model: str
    repo: str


@_kind("download_finished")
@dataclass(frozen=True, kw_only=True)
class DownloadFinished(TypedEvent):
    model: str
    path: str


@_kind("writing")
@dataclass(frozen=True, kw_only=True)
class Writing(TypedEvent):
    """An LLM in this process is writing a prompt."""
    purpose: str
    tokens: int
    tokens_per_second: float


EVENT_TYPES: tuple[type[TypedEvent], ...] = (
    Notice, Loading, RunStarted, Expanded, ControlPrepared, RoundStarted, Rendered, Scored, Judged, Previewed, Repair,
    VlmJudged, Finished, Result, BatchStarted, BatchProgress, BatchFinished, EngineImage, EngineProgress, Queued, Step,
    DownloadStarted, DownloadFinished, Writing)
_BY_KIND = {t.KIND: t for t in EVENT_TYPES}


def event_from(kind: str, data: dict[str, Any]) -> Event:
    """The event a serialised `{"kind": kind, **data}` (serve's SSE, the CLI's batch stream) was
    made from: its typed class where the kind is known and the keys are its fields, else a plain
    Event (a plugin's own kind, or one that serve added keys to, such as a rendered image's card)."""
    cls = _BY_KIND.get(kind)
    if cls is not None:
        names = {cls.RENAMED.get(f.name, f.name): f.name for f in fields(cls) if f.init}
        if set(data) <= set(names):
            try:
                return cls(**{names[key]: value for key, value in data.items()})
            except TypeError:  # a field without a default is missing
                pass
    return Event(kind, dict(data))
