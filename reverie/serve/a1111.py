"""The AUTOMATIC1111 API under `reverie serve`: what Open WebUI, SillyTavern, Discord bots and
scripts already speak (`/sdapi/v1/txt2img` and friends).

By default a prompt is the person's idea: it goes through the loop (expand, render, score,
revise) and the answer is the best images. `override_settings: {"reverie_mode": "exact"}` or
`?mode=exact` renders the prompt as written, as A1111 would. Either way the answer is A1111's:
base64 PNGs, the request echoed as `parameters`, and `info`, a JSON string clients parse.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import time
from typing import Any, Optional

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from reverie.logs import get
from reverie.profiles import PROFILES
from reverie.render.resolution import MAX_MEGAPIXELS, MIN_MEGAPIXELS
from reverie.serve import doors
from reverie.serve.http import BodyError, read_json
from reverie.serve.service import Busy
from reverie.types import Render, ReverieError

router = APIRouter()
log = get("serve.a1111")

IDEA_ROUNDS = 2  # best of two rounds: the critic revises once
MAX_IMAGE_BODY = 24 * 1024 * 1024  # img2img carries its image in the JSON
MAX_PROMPT = 4000
MAX_SIDE = 4096
# What a client may send and we accept without acting on it: A1111 knobs the loop sets itself.
SAMPLER_ALIASES = {"euler": ["euler", "Euler"], "euler_a": ["euler_ancestral", "Euler a"],
                   "dpmpp_2m": ["dpmpp_2m", "DPM++ 2M"], "flow_match_euler": ["flowmatch_euler", "Euler"]}


def a1111_error(status: int, message: str, kind: str = "HTTPException") -> JSONResponse:
    """A1111's error body: FastAPI's `detail`, and the `error`/`errors` its API middleware adds."""
    return JSONResponse({"error": kind, "detail": message, "body": "", "errors": message}, status_code=status)


def current_model(request: Request) -> str:
    service = request.app.state.service
    return getattr(request.app.state, "a1111_model", None) or service.studio.profile_name


def model_entry(name: str) -> dict[str, Any]:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return {"title": name, "model_name": name, "hash": digest[:8],
            "sha256": digest, "filename": name, "config": None}


def profile_from(title: Optional[str], fallback: str) -> str:
    """A checkpoint title from a client ('z-image-turbo', or an A1111 title with its hash) -> a profile."""
    if not title:
        return fallback
    name = str(title).split(" [")[0].strip()
    if name.endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if name not in PROFILES:
        raise ReverieError(f"unknown model {title!r}: use one of GET /sdapi/v1/sd-models ({', '.join(PROFILES)})")
    return name


def number(data: dict, key: str, kind, default, low=None, high=None):
    value = data.get(key, default)
    if value is None:
        return default
    try:
        value = kind(value)
    except (TypeError, ValueError):
        raise ReverieError(f"{key} must be a number, not {data.get(key)!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise ReverieError(f"{key} is from {low} to {high}, not {value}")
    return value


def shape(width: int, height: int) -> tuple[str, float]:
    megapixels = min(MAX_MEGAPIXELS, max(MIN_MEGAPIXELS, width * height / (1024 * 1024)))
    return f"{width}:{height}", round(megapixels, 4)


def wants_exact(data: dict, request: Request) -> bool:
    settings = data.get("override_settings") or {}
    mode = (settings.get("reverie_mode") if isinstance(settings, dict) else None) or request.query_params.get("mode")
    if mode not in (None, "", "idea", "exact"):
        raise ReverieError(f"reverie_mode is idea (through the loop, the default) or exact (the prompt as written), not {mode!r}")
    return mode == "exact"


def save_init_image(service, b64: str) -> str:
    """An img2img source image, decoded and written into the home under its hash: the reference
    path is ours, never the client's."""
    from PIL import Image

    data = b64.split(",", 1)[1] if b64.startswith("data:") else b64
    try:
        raw = base64.b64decode(data, validate=False)
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
        with Image.open(io.BytesIO(raw)) as im:
            image = im.convert("RGB")
    except (binascii.Error, ValueError, OSError):
        raise ReverieError("init_images[0] is not a base64 PNG or JPEG image") from None
    if image.width * image.height > MAX_SIDE * MAX_SIDE:
        raise ReverieError(f"init_images[0] is larger than {MAX_SIDE}x{MAX_SIDE}")
    folder = service.studio.home / "a1111"
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    path = folder / f"init-{hashlib.sha256(buf.getvalue()).hexdigest()[:16]}.png"
    if not path.exists():
        path.write_bytes(buf.getvalue())
    return str(path)


def infotext(render: Render) -> str:
    from reverie.store.pngmeta import read_metadata

    try:
        return read_metadata(render.path).get("parameters") or render.prompt
    except OSError:
        return render.prompt


def answer(data: dict, renders: list[Render], run_id: str, idea: str, negative: str, model: str, service,
           exact: bool, request_id: Optional[int] = None) -> dict[str, Any]:
    """A1111's txt2img answer: images, the request as `parameters`, and `info` as a JSON string."""
    first = renders[0].spec
    whys = [] if exact else [c["why"] for c in doors.best_cards(service, run_id, k=len(renders))]
    info = {
        "prompt": idea, "all_prompts": [r.prompt for r in renders],
        "negative_prompt": negative, "all_negative_prompts": [r.spec.negative for r in renders],
        "seed": first.seed, "all_seeds": [r.seed for r in renders],
        "subseed": -1, "all_subseeds": [-1 for _ in renders], "subseed_strength": 0,
        "width": first.width, "height": first.height, "sampler_name": first.sampler,
        "cfg_scale": data.get("cfg_scale", 7.0), "steps": first.steps, "batch_size": len(renders),
        "restore_faces": False, "face_restoration_model": None, "sd_model_name": model,
        "sd_model_hash": hashlib.sha256(model.encode()).hexdigest()[:8], "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": data.get("denoising_strength"),
        "extra_generation_params": {"reverie run": run_id, "reverie mode": "exact" if exact else "idea"},
        "index_of_first_image": 0, "infotexts": [infotext(r) for r in renders], "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1, "is_using_inpainting_conditioning": False,
        "version": "reverie",
        "reverie": {"run_id": run_id, "request_id": request_id, "mode": "exact" if exact else "idea",
                    "image_ids": [r.id for r in renders], "urls": [f"/files/{r.sha256}.png" for r in renders],
                    "scores": [r.scores.composite if r.scores else None for r in renders], "why": whys},
    }
    images = [doors.png_b64(r.path) for r in renders]
    # The request echoed as A1111 does, less what could be large or secret (an image, SillyTavern's auth).
    parameters = {k: v for k, v in data.items() if k not in ("init_images", "mask", "auth", "url")}
    return {"images": images, "parameters": parameters, "info": json.dumps(info, ensure_ascii=False)}


async def generate(request: Request, img2img: bool):
    service = request.app.state.service
    try:
        data = await read_json(request, limit=MAX_IMAGE_BODY if img2img else 256 * 1024)
    except BodyError as e:
        return a1111_error(e.status, e.message)
    try:
        prompt = str(data.get("prompt") or "").strip()
        if not prompt:
            raise ReverieError("prompt is empty: say what to make, e.g. {\"prompt\": \"a fox in the rain\"}")
        if len(prompt) > MAX_PROMPT:
            raise ReverieError(f"prompt is over {MAX_PROMPT} characters")
        negative = str(data.get("negative_prompt") or "")[:MAX_PROMPT]
        width = number(data, "width", int, 512, 64, MAX_SIDE)
        height = number(data, "height", int, 512, 64, MAX_SIDE)
        count = number(data, "batch_size", int, 1, 1, doors.MAX_N) * number(data, "n_iter", int, 1, 1, doors.MAX_N)
        if count > doors.MAX_N:
            raise ReverieError(f"batch_size × n_iter is at most {doors.MAX_N} images")
        seed = number(data, "seed", int, -1, -1, 2**32 - 1)
        steps = number(data, "steps", int, None, 1, doors.MAX_STEPS)
        number(data, "cfg_scale", float, 7.0, 0, 30)
        settings = data.get("override_settings") or {}
        model = profile_from(settings.get("sd_model_checkpoint") if isinstance(settings, dict) else None,
                             current_model(request))
        exact = wants_exact(data, request)
        aspect, megapixels = shape(width, height)
        references = []
        if img2img:
            init = data.get("init_images") or []
            if not isinstance(init, list) or not init or not isinstance(init[0], str):
                raise ReverieError("img2img needs init_images: a list with one base64 image")
            strength = number(data, "denoising_strength", float, 0.75, 0.0, 1.0)
            path = await anyio.to_thread.run_sync(save_init_image, service, init[0])
            references = [{"path": path, "control": "img2img", "strength": strength}]
            if exact:
                raise ReverieError("img2img renders through the loop: leave out reverie_mode exact")
        if exact:
            run_id, renders = await anyio.to_thread.run_sync(lambda: doors.render_exact(
                service, prompt, negative=negative, count=count, seed=None if seed < 0 else seed, aspect=aspect,
                megapixels=megapixels, steps=steps, profile=model))
            return answer(data, renders, run_id, prompt, negative, model, service, exact=True)
        job = await anyio.to_thread.run_sync(lambda: doors.start_make(
            service, prompt, n=count, rounds=IDEA_ROUNDS, aspect=aspect, megapixels=megapixels,
            seed=None if seed < 0 else seed, profile=model, keep=False, origin="a1111", references=references))
    except Busy as e:
        return a1111_error(429, str(e))
    except ReverieError as e:
        return a1111_error(422, str(e))
    shutting_down = a1111_error(503, f"the server is shutting down; request {job.id} finishes when it starts again")
    try:
        while not job.done.is_set():
            if service.shutdown.is_set():  # answered now, as the OpenAI route does: the stop need not wait on us
                return shutting_down
            if await request.is_disconnected():  # SillyTavern's stop button closes the socket
                job.stop.set()
                return a1111_error(499, "the client closed the connection; the run was stopped")
            await asyncio.sleep(0.2)
    except asyncio.CancelledError:
        return shutting_down
    if job.status != "done" and service.shutdown.is_set():  # its run stopped for the shutdown before we looked
        return shutting_down
    if job.status != "done" or not job.best:
        return a1111_error(500, job.error or f"the run was {job.status}", kind=job.status.capitalize())
    return answer(data, job.best, job.run_id, prompt, negative, model, service, exact=False, request_id=job.id)


@router.post("/sdapi/v1/txt2img")
async def txt2img(request: Request):
    return await generate(request, img2img=False)


@router.post("/sdapi/v1/img2img")
async def img2img(request: Request):
    return await generate(request, img2img=True)


@router.get("/sdapi/v1/sd-models")
def sd_models():
    return [model_entry(name) for name in PROFILES]


@router.get("/sdapi/v1/options")
def get_options(request: Request):
    return {"sd_model_checkpoint": current_model(request), "sd_checkpoint_hash": model_entry(current_model(request))["sha256"],
            "samples_format": "png", "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic",
            "reverie_mode": "idea"}


@router.post("/sdapi/v1/options")
async def set_options(request: Request):
    """Only the model is taken (Open WebUI posts the whole options object back); the rest is A1111's."""
    try:
        data = await read_json(request)
        if "sd_model_checkpoint" in data:
            request.app.state.a1111_model = profile_from(data["sd_model_checkpoint"], current_model(request))
    except BodyError as e:
        return a1111_error(e.status, e.message)
    except ReverieError as e:
        return a1111_error(422, str(e))
    return None


@router.get("/sdapi/v1/samplers")
def samplers():
    names = sorted({p.sampler for p in PROFILES.values()})
    return [{"name": name, "aliases": SAMPLER_ALIASES.get(name, [name]), "options": {}} for name in names]


@router.get("/sdapi/v1/progress")
def progress(request: Request):
    """How far the running requests are, as one A1111 job (SillyTavern polls it after setting a model)."""
    service = request.app.state.service
    running = [j for j in list(service.jobs.values()) if not j.done.is_set()]
    done = budget = 0
    for job in running:
        status = doors.progress_of(job)
        done += status.get("rendered") or 0
        budget += status.get("budget") or 0
    fraction = (done / budget) if budget else 0.0
    return {"progress": round(min(fraction, 1.0), 4) if running else 0.0, "eta_relative": 0.0,
            "state": {"skipped": False, "interrupted": False, "job": f"reverie {running[0].id}" if running else "",
                      "job_count": len(running), "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "job_no": 0,
                      "sampling_step": done, "sampling_steps": budget},
            "current_image": None, "textinfo": None}


@router.post("/sdapi/v1/interrupt")
def interrupt(request: Request):
    """Stop the running A1111 requests between images (what they rendered is kept); the web
    studio's and the OpenAI clients' runs are theirs to stop."""
    service = request.app.state.service
    for job in [j for j in list(service.jobs.values()) if not j.done.is_set() and j.payload.get("origin") == "a1111"]:
        service.stop(job.id)
    return None
