"""The in-process diffusers engine.

Loads a pipeline once and keeps it warm; encodes each distinct prompt once and reuses the
embeddings for every seed; renders seeds in batches with one torch.Generator per seed, so a
seed gives the same image alone or in a batch; implements blind steps (the first k steps see a
zeroed conditioning, the rest the real prompt) through the step-end callback.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Sequence

from reverie.render.profiles import Profile, get_profile
from reverie.types import EngineOutput, Event, ProgressFn, RenderSpec, ReverieError, no_progress


def quiet_libraries() -> None:
    """diffusers and transformers print load bars and deprecation chatter; reverie has its own progress."""
    import warnings

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers(\.|$)")


def pick_device(device: Optional[str] = None) -> str:
    import torch

    if device:
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, dtype: Optional[str] = None):
    import torch

    if dtype:
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise ReverieError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16") from None
    if device.startswith("cuda"):
        return torch.bfloat16
    if device.startswith("mps"):
        return torch.bfloat16
    return torch.float32


def default_batch_size(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        gib = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
        return 4 if gib >= 40 else 2 if gib >= 20 else 1
    return 4


def resolve_weights(profile: Profile, model_path: Optional[str]) -> str:
    """A local folder or single file, else the Hugging Face cache; never downloads."""
    if model_path:
        p = Path(model_path).expanduser()
        if not p.exists():
            raise ReverieError(f"model path {model_path} does not exist: point --model-path at a diffusers folder or a .safetensors file")
        return str(p)
    if not profile.repo_id:
        raise ReverieError(f"profile {profile.name} has no hub repo: set --model-path to its .safetensors file")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(profile.repo_id, local_files_only=True)
    except Exception:
        raise ReverieError(
            f"weights for {profile.name} are not on this machine: run `reverie models pull {profile.name}` or set --model-path"
        ) from None


class DiffusersEngine:
    name = "diffusers"

    def __init__(
        self,
        model_path: Optional[str] = None,
        profile: str = "z-image-turbo",
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        batch_size: Optional[int] = None,
        cpu_offload: bool = False,
        embed_cache_size: int = 16,
        pad_batches: bool = True,
        **_ignored: Any,
    ):
        import diffusers

        self.profile = get_profile(profile)
        self.model_path = model_path
        self.device = pick_device(device)
        self.dtype_name = dtype
        self.batch_size = batch_size
        self.cpu_offload = cpu_offload
        # Batched matmuls round differently for different batch shapes. Always running full
        # batches (padding the last one) makes a seed's pixels independent of its batch-mates.
        self.pad_batches = pad_batches
        self.version = f"diffusers {diffusers.__version__}"
        self.pipe = None
        self._embeds: OrderedDict[tuple, Any] = OrderedDict()
        self._embed_cache_size = embed_cache_size
        self.encoder_calls = 0  # how many times the text encoder ran; the bench reads it
        self.forward_seconds = 0.0

    # -- loading ---------------------------------------------------------------------------
    def load(self):
        if self.pipe is not None:
            return self.pipe
        import diffusers
        import torch

        quiet_libraries()
        where = resolve_weights(self.profile, self.model_path)
        cls = getattr(diffusers, self.profile.pipeline)
        dtype = pick_dtype(self.device, self.dtype_name)
        try:
            if os.path.isfile(where):
                pipe = cls.from_single_file(where, torch_dtype=dtype)
            else:
                pipe = cls.from_pretrained(where, torch_dtype=dtype)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ReverieError(f"could not load {self.profile.name} from {where}: {first}") from None
        if self.cpu_offload and self.device.startswith("cuda"):
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        if self.batch_size is None:
            self.batch_size = default_batch_size(self.device)
        self._base_shift = getattr(pipe.scheduler.config, "shift", None)
        self.pipe = pipe
        torch.set_grad_enabled(False)
        return pipe

    # -- prompt embeddings -----------------------------------------------------------------
    def _embeddings(self, prompt: str):
        key = (prompt,)
        if key in self._embeds:
            self._embeds.move_to_end(key)
            return self._embeds[key]
        pipe = self.load()
        embeds, _ = pipe.encode_prompt(prompt=prompt, device=pipe._execution_device, do_classifier_free_guidance=False)
        self.encoder_calls += 1
        self._embeds[key] = embeds[0]
        while len(self._embeds) > self._embed_cache_size:
            self._embeds.popitem(last=False)
        return embeds[0]

    # -- rendering -------------------------------------------------------------------------
    @staticmethod
    def _group_key(spec: RenderSpec) -> tuple:
        return (spec.prompt, spec.negative, spec.width, spec.height, spec.steps, spec.guidance,
                spec.shift, spec.blind_steps, spec.control)

    def render(self, specs: Sequence[RenderSpec], progress: ProgressFn | None = None) -> list[EngineOutput]:
        progress = progress or no_progress
        self.load()
        groups: OrderedDict[tuple, list[int]] = OrderedDict()
        for i, spec in enumerate(specs):
            groups.setdefault(self._group_key(spec), []).append(i)
        out: list[Optional[EngineOutput]] = [None] * len(specs)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = [specs[i] for i in chunk]
                for i, result in zip(chunk, self._render_batch(batch)):
                    out[i] = result
                    progress(Event("engine_image", {"seed": result.spec.seed, "seconds": result.seconds}))
        return [o for o in out if o is not None]

    def _render_batch(self, batch: list[RenderSpec]) -> list[EngineOutput]:
        import torch

        pipe = self.pipe
        spec = batch[0]
        t0 = time.perf_counter()
        embeds = self._embeddings(spec.prompt)
        seeds = [int(s.seed) for s in batch]
        if self.pad_batches and len(seeds) < self.batch_size:
            seeds += [0] * (self.batch_size - len(seeds))
        real = [embeds] * len(seeds)
        blind = max(0, min(int(spec.blind_steps), spec.steps - 1))
        callback = None
        if blind:
            zeroed = [torch.zeros_like(embeds)] * len(seeds)

            def callback(pipeline, step, timestep, kwargs):
                # After step `blind - 1` the rest of the schedule sees the real prompt.
                if step == blind - 1:
                    return {"prompt_embeds": real}
                return {}

        if spec.shift is not None and hasattr(pipe.scheduler, "set_shift"):
            pipe.scheduler.set_shift(float(spec.shift))
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        try:
            images = pipe(
                prompt_embeds=zeroed if blind else real,
                height=spec.height,
                width=spec.width,
                num_inference_steps=spec.steps,
                guidance_scale=spec.guidance,
                generator=generators,
                callback_on_step_end=callback,
                output_type="pil",
            ).images[: len(batch)]
        except torch.cuda.OutOfMemoryError as e:  # the caller retries with a smaller batch
            raise MemoryError(str(e)) from None
        finally:
            if self._base_shift is not None and hasattr(pipe.scheduler, "set_shift"):
                pipe.scheduler.set_shift(self._base_shift)
        seconds = (time.perf_counter() - t0) / len(batch)
        self.forward_seconds += seconds * len(batch)
        return [EngineOutput(spec=s, image=img, engine=self.name, engine_version=self.version, seconds=seconds)
                for s, img in zip(batch, images)]

    def close(self) -> None:
        self.pipe = None
        self._embeds.clear()
