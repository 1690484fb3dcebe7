"""Chat edits what the person saw: "make it night", "give her a red scarf", "remove the car" and
"make the second one night" edit an image the last turn showed (its best, or the one named);
a new subject ("make her a knight"), "new seeds", "more like the second one", "keep the pose" and
a new shape still render from text. Each turn says which it did and why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from reverie.types import Render

_ORDINAL = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4, "last": -1}
_POINTER = re.compile(r"\b(?:the\s+)?(first|1st|second|2nd|third|3rd|fourth|4th|last)\s+(?:one|image|picture)\b|#([1-4])\b",
                      re.I)
# Readings that ask for a new picture, not a change to the one shown (the interpreters' change lines).
_RERENDER = ("new idea", "subject:", "new seeds", "more like", "keep the", "aspect", "the same again")


@dataclass(frozen=True)
class ChatEdit:
    render: Render  # the image to edit
    rank: int  # its place among the images the last turn showed (1-based; -1 the last)
    instruction: str


def pointed_rank(message: str) -> int:
    m = _POINTER.search(message)
    if not m:
        return 1
    return int(m.group(2)) if m.group(2) else _ORDINAL[m.group(1).lower()]


def as_instruction(message: str) -> str:
    """"make the second one night" -> "make it night": the editor sees one image, "it"."""
    text = _POINTER.sub("it", " ".join(message.split())).strip(" .!")
    return re.sub(r"\bit\s+it\b", "it", text)


def choose(message: str, changes: tuple[str, ...], shown: list[Render], can_edit: bool) -> tuple[Optional[ChatEdit], str]:
    """(the edit to make, or None to render from text; the line that says which and why)."""
    if not shown:
        return None, "rendered from text: nothing shown yet to edit"
    rerender = [c for c in changes if c.lower().startswith(_RERENDER)]
    if rerender:
        return None, f"rendered from text: {rerender[0]} asks for a new picture, not a change to this one"
    if not can_edit:
        return None, "rendered from text: no image editor for this profile and engine"
    rank = pointed_rank(message)
    if not (rank == -1 or 1 <= rank <= len(shown)):
        return None, f"rendered from text: the last turn showed {len(shown)} images, not #{rank}"
    render = shown[rank - 1] if rank > 0 else shown[-1]
    which = "the best image" if rank == 1 else f"image #{rank}" if rank > 0 else "the last image"
    return (ChatEdit(render=render, rank=rank, instruction=as_instruction(message)),
            f"edited {which} of the last turn (render {render.id}): a change to the picture you saw, so the picture is kept")
