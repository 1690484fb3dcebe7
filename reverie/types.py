"""The small shared types that cross package boundaries.

agents, render, scoring and store import only this module from each other's world, so these
types stay frozen, plain and JSON-serialisable. ReverieError is defined in reverie.errors (below
reverie.profiles, which raises it) and imported from here everywhere else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Literal, Optional, Protocol, Sequence

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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["references"] = [asdict(r) for r in self.references]
        # Left out while unset, so the hash of a request made before the field existed (the key
        # that resumes an unfinished run) stays the same.
        if d["max_renders"] is None:
            del d["max_renders"]
        if not d["embed_noise"]:
            del d["embed_noise"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Request":
        d = dict(d)
        d["references"] = tuple(Reference(**r) for r in d.get("references", ()))
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

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["embed_noise"]:  # off: left out, so specs (and their hashes) from before the knob stay the same
            del d["embed_noise"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RenderSpec":
        d = dict(d)
        if d.get("control"):
            d["control"] = Control(**d["control"])
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
