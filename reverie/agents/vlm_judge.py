"""The VLM judge: a vision model over any OpenAI-compatible server (Ollama or vLLM Qwen-VL, say)
looks at the run's top few candidates beside the idea, names the one that realises it best, and
says what is wrong with them.

It is asked once per round at most: before the critic decides (its notes feed the revision) and
when the run stops (its choice leads the final pick). Never once per image: scorers do that.
Configured in reverie.toml:

    [judge]
    vlm_url = "http://localhost:11434/v1"
    vlm_model = "qwen2.5vl:7b"
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from pydantic import BaseModel, Field

from reverie.types import sha256_text

DEFAULT_TOP = 4
IMAGE_SIDE = 512  # images are sent as JPEGs no larger than this: enough to judge, small on the wire

JUDGE_SYSTEM = """\
You judge candidate images made by an image generator against the person's idea. You see the \
idea and numbered images. Say which image realises the idea best, and what is wrong with the \
images: concrete visual faults (a missing or wrong subject, wrong count, broken anatomy, garbled \
text, muddy or flat lighting, awkward composition), so the prompt can be revised to fix them.
Answer with a JSON object only:
{"best": <the number of the best image>, "reason": "<one sentence: why it is the best>", \
"problems": "<one or two sentences: what is wrong; empty if nothing>"}
"""


class VerdictAnswer(BaseModel):
    best: int = Field(ge=1)
    reason: str = Field(min_length=1)
    problems: str = ""


@dataclass(frozen=True)
class Verdict:
    render_id: int  # the candidate the judge chose
    rank: int  # its 1-based place among the candidates as sent (best composite first)
    reason: str
    problems: str
    model: str


@dataclass(frozen=True)
class VLMSettings:
    url: str
    model: str
    api_key: str = ""
    timeout: float = 120.0
    top: int = DEFAULT_TOP


def vlm_settings(section: Optional[Mapping[str, Any]]) -> Optional[VLMSettings]:
    """The [judge] table as settings, or None when no vision model is configured."""
    section = dict(section or {})
    if not section.get("vlm_url"):
        return None
    return VLMSettings(url=str(section["vlm_url"]).rstrip("/"), model=str(section.get("vlm_model", "")),
                       api_key=str(section.get("vlm_api_key", "")), timeout=float(section.get("vlm_timeout", 120.0)),
                       top=max(2, int(section.get("top", DEFAULT_TOP))))


def image_part(image) -> dict:
    """An OpenAI `image_url` content part holding the image as a JPEG data URI."""
    image = image.convert("RGB")
    image.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()}}


class VLMJudge:
    """Compares candidates through an LLMClient whose server takes images."""

    name = "vlm"

    def __init__(self, llm, top: int = DEFAULT_TOP):
        self.llm, self.top = llm, top

    def judge(self, idea: str, candidates: Sequence[tuple[int, Any]]) -> Verdict:
        """`candidates`: (render id, PIL image), best composite first; at most `top` are sent.
        Raises LLMUnavailable when the model gives no usable answer."""
        shown = list(candidates)[: self.top]
        parts: list[dict] = [{"type": "text", "text": f"Idea: {idea}\n{len(shown)} images follow, numbered 1 to {len(shown)}."}]
        for i, (_, image) in enumerate(shown, 1):
            parts += [{"type": "text", "text": f"Image {i}:"}, image_part(image)]

        def check(answer: VerdictAnswer) -> str:
            return "" if answer.best <= len(shown) else f"best must be a number from 1 to {len(shown)}"

        answer = self.llm.structured(JUDGE_SYSTEM, parts, VerdictAnswer, purpose="judge",
                                     system_hash=sha256_text(JUDGE_SYSTEM)[:16], temperature=0.1, check=check)
        return Verdict(render_id=shown[answer.best - 1][0], rank=answer.best, reason=" ".join(answer.reason.split()),
                       problems=" ".join(answer.problems.split()), model=self.llm.model)


def build_vlm_judge(section: Optional[Mapping[str, Any]], record=None) -> Optional[VLMJudge]:
    from reverie.agents.llm import LLMClient, LLMSettings

    settings = vlm_settings(section)
    if settings is None:
        return None
    llm = LLMClient(LLMSettings(base_url=settings.url, model=settings.model, api_key=settings.api_key,
                                timeout=settings.timeout), record=record)
    return VLMJudge(llm, top=settings.top)
