"""The reference picker: which control a reference image should give, and the control image itself.

pose for people, depth for scenes and objects, canny for line art, logos and text, img2img when
the idea says "like this". Canny needs no weights (OpenCV); depth and pose run local models from
<home>/models/depth and <home>/models/pose when they are there.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from reverie.types import Reference, ReverieError

MAX_SIDE = 2048  # control images larger than any profile's side only cost time

_LIKE_THIS = re.compile(r"\b(like (this|that|the reference)|similar|same as|variation|variant|in (this|the same) style|based on)\b", re.I)
_PEOPLE = re.compile(
    r"\b(person|people|man|men|woman|women|girl|boy|child|kid|dancer|athlete|portrait|character|figure|pose|posing|"
    r"model|warrior|knight|soldier|wizard|witch|princess|king|queen|couple|family|crowd)s?\b|[人女男孩]", re.I)
_LINE_ART = re.compile(r"\b(logo|icon|text|lettering|typography|sign|line ?art|sketch|drawing|diagram|outline|"
                       r"blueprint|emblem|badge|poster|font)s?\b", re.I)


@dataclass(frozen=True)
class PreparedControl:
    kind: str
    data: bytes  # PNG bytes of the control image
    source_sha: str  # sha256 of the reference file as given
    note: str = ""  # one line for the user when auto had to settle for another kind


def load_reference(path: str | Path) -> tuple[Image.Image, str]:
    """Open and fully decode a reference image; anything wrong is one line naming the fix."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise ReverieError(f"reference {file} is a folder: pass --ref with the path of one image file")
    if file.exists() and not file.is_file():
        raise ReverieError(f"reference {file} is not a regular file (a device or a pipe): pass --ref with an image file")
    if not file.is_file():
        raise ReverieError(f"reference {file} does not exist: pass --ref with the path of an image file")
    data = file.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            # Above MAX_IMAGE_PIXELS PIL only warns; a reference that large is refused outright.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                image = im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ReverieError(f"reference {file} is too large to open safely (over {Image.MAX_IMAGE_PIXELS} pixels): "
                           f"pass a smaller image") from None
    except UnidentifiedImageError:
        raise ReverieError(f"reference {file} is not an image: pass a PNG, JPEG or WebP file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ReverieError(f"reference {file} is damaged or truncated ({e}): pass a complete image file") from None
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return image, sha


def looks_like_line_art(image: Image.Image) -> bool:
    """Few colours on a flat background: a logo, a drawing, lettering."""
    small = image.convert("RGB").resize((96, 96), Image.Resampling.NEAREST)
    quantised = small.quantize(colors=64)
    counts = sorted((c for c, _ in quantised.getcolors(64) or []), reverse=True)
    total = 96 * 96
    # One colour covers much of the picture and a handful cover nearly all of it.
    return bool(counts) and counts[0] / total > 0.35 and sum(counts[:6]) / total > 0.9


def choose_kind(idea: str, image: Image.Image) -> tuple[str, str]:
    """(kind, why) for `--control auto`."""
    if _LIKE_THIS.search(idea):
        return "img2img", "the idea asks for something like the reference"
    if _LINE_ART.search(idea) or looks_like_line_art(image):
        return "canny", "line art, a logo or text: keep its edges"
    if _PEOPLE.search(idea):
        return "pose", "people: keep the pose"
    return "depth", "a scene or objects: keep the depth layout"


def canny(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    import cv2
    import numpy as np

    gray = np.asarray(image.convert("L"))
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(edges).convert("RGB")


def weights_dir(models_dir: str | Path, kind: str) -> Path | None:
    d = Path(models_dir) / kind
    return d if d.is_dir() and any(d.iterdir()) else None


def missing_weights(kind: str) -> str:
    return f"no {kind} model weights on this machine: run `reverie models pull {kind}`, or use --control canny"


def depth(image: Image.Image, weights: Path) -> Image.Image:
    """A depth map from a local transformers depth-estimation model (Depth Anything, DPT)."""
    from transformers import pipeline

    estimator = pipeline("depth-estimation", model=str(weights), device="cpu")
    result = estimator(image)
    return result["depth"].convert("RGB").resize(image.size)


def pose(image: Image.Image, weights: Path) -> Image.Image:
    """An OpenPose skeleton from local controlnet-aux annotator weights."""
    try:
        from controlnet_aux import OpenposeDetector
    except ImportError:
        raise ReverieError("pose references need the controlnet-aux package: pip install controlnet-aux, or use --control depth") from None
    detector = OpenposeDetector.from_pretrained(str(weights))
    return detector(image).convert("RGB").resize(image.size)


def to_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def prepare_control(reference: Reference, idea: str, models_dir: str | Path) -> PreparedControl:
    """Load the reference, choose its kind, and make the control image."""
    image, sha = load_reference(reference.path)
    kind, note = reference.control, ""
    if kind == "auto":
        kind, why = choose_kind(idea, image)
        if kind in ("depth", "pose") and weights_dir(models_dir, kind) is None:
            # auto should not fail a run over weights it was never asked for: edges keep structure too.
            note = f"reference: {why}, but {missing_weights(kind)}; using canny edges for now"
            kind = "canny"
    if kind == "canny":
        control = canny(image)
    elif kind == "img2img":
        control = image
    elif kind in ("depth", "pose"):
        weights = weights_dir(models_dir, kind)
        if weights is None:
            raise ReverieError(missing_weights(kind))
        control = depth(image, weights) if kind == "depth" else pose(image, weights)
    else:
        raise ReverieError(f"unknown control kind {kind!r}: use canny, depth, pose, img2img or auto")
    return PreparedControl(kind=kind, data=to_png(control), source_sha=sha, note=note)
