"""The in-process diffusers engine.

Loads a pipeline once and keeps it warm; encodes each distinct (prompt, negative) once and
reuses the embeddings for every seed; renders seeds in batches with one torch.Generator per
seed, so a seed's starting noise is the same whichever seeds share its batch (its pixels may still
differ by a last bit with the batch size: see pad_batches); implements blind steps (the first k
steps see a zeroed conditioning, the rest the real prompt) through the step-end callback.
Control images (canny/depth/pose) and img2img references run through pipeline variants built
from the loaded pipeline's own components, so the weights are in memory once. What differs
between model families is in reverie.render.families, one adapter each.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Sequence

from reverie.profiles import CONTROL_PROFILES, DEFAULT_PROFILE, HANDOFF_BASES, get_profile, handoff_base
from reverie.render.editors import adapter_of
from reverie.render.families import COMFY_ONLY_SAMPLERS, SAMPLERS
from reverie.render.weights import resolve_controlnet, resolve_weights
from reverie.types import (Control, EngineImage, EngineOutput, OutputFn, ProgressFn, RenderSpec, ReverieError, Step,
                           no_progress)


def takes_step_callback(pipe) -> bool:
    """Whether a pipeline calls back after each step (nearly all do; an older one renders without steps shown)."""
    import inspect

    try:
        return "callback_on_step_end" in inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return False


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
    # A NaN render is caught and recorded as failed by the store; numpy's cast warning about it
    # would only be a stray line in the user's terminal.
    warnings.filterwarnings("ignore", message="invalid value encountered in cast", category=RuntimeWarning,
                            module=r"diffusers(\.|$)")


def pick_device(device: Optional[str] = None) -> str:
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ReverieError(f"device {device} is not available here (no CUDA GPU seen by torch): use --device cpu or mps")
        if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ReverieError("device mps is not available here: use --device cpu or cuda")
        if device.split(":")[0] not in ("cuda", "mps", "cpu", "xpu"):
            raise ReverieError(f"unknown device {device!r}: use cuda, cuda:N, mps or cpu")
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
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.startswith("mps"):
        return torch.bfloat16
    return torch.float32


def default_batch_size(device: str) -> int:
    """Seeds per forward pass, from the accelerator's memory (a 6B DiT in bf16 wants ~20 GiB)."""
    import torch

    if device.startswith("cuda"):
        gib = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
        return 4 if gib >= 40 else 2 if gib >= 20 else 1
    if device.startswith("mps"):
        return 2
    return 4


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _repeat(embeds: dict[str, Any], n: int) -> dict[str, Any]:
    """Batch-of-one embeddings to a batch of n: Z-Image takes lists, the others batched tensors."""
    import torch

    return {k: ([v[0]] * n if isinstance(v, list) else torch.cat([v] * n)) for k, v in embeds.items()}


EMBED_NOISE_SALT = 0x5EED  # the noise's generator differs from the latents' for the same seed


def with_embed_noise(embeds: dict[str, Any], seeds: Sequence[int], strength: float) -> dict[str, Any]:
    """Each image's positive text embeddings plus Gaussian noise seeded by its own seed, scaled by
    `strength` times the embeddings' standard deviation: the same spec always gets the same
    noise, whatever batch it is rendered in. Drawn on the CPU in float32, so every device agrees."""
    import torch

    if not strength or "prompt_embeds" not in embeds:
        return embeds
    value = embeds["prompt_embeds"]
    rows = list(value) if isinstance(value, list) else list(value.unbind(0))
    noised = []
    for seed, row in zip(seeds, rows):
        g = torch.Generator(device="cpu").manual_seed((int(seed) ^ EMBED_NOISE_SALT) & 0xFFFFFFFFFFFF)
        noise = torch.randn(row.shape, generator=g, dtype=torch.float32)
        scale = float(strength) * float(row.float().std())
        noised.append(row + (noise * scale).to(device=row.device, dtype=row.dtype))
    return {**embeds, "prompt_embeds": noised if isinstance(value, list) else torch.stack(noised)}


def file_hash(path: str | os.PathLike) -> str:
    """A1111's short model hash (civitai's AutoV1): sha256 of 64 KiB at 1 MiB, 8 hex digits.
    Cheap on a 12 GB checkpoint, where hashing the whole file takes a minute."""
    import hashlib

    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def weights_hash(where: str | os.PathLike) -> str:
    """file_hash for a single file; for a diffusers folder, one hash over its weight files'
    names, sizes and short hashes (A1111 has no convention for folders)."""
    import hashlib

    where = Path(where)
    if where.is_file():
        return file_hash(where)
    h = hashlib.sha256()
    for f in sorted(p for p in where.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json")):
        h.update(f"{f.relative_to(where).as_posix()}\0{f.stat().st_size}\0{file_hash(f)}\n".encode())
    return h.hexdigest()[:10]


class DiffusersEngine:
    name = "diffusers"
    # Honours RenderSpec.embed_noise (the loop turns that knob only on engines that say so).
    embed_noise = True

    def __init__(
        self,
        model_path: Optional[str] = None,
        profile: str = DEFAULT_PROFILE,
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        batch_size: Optional[int] = None,
        cpu_offload: bool = False,
        controlnet_path: Optional[str] = None,
        embed_cache_size: int = 16,
        pad_batches: bool = False,
        handoff_path: Optional[str] = None,
        **_ignored: Any,
    ):
        import diffusers

        self.profile = get_profile(profile)
        self.adapter = adapter_of(self.profile)
        self.model_path = model_path
        self.controlnet_path = controlnet_path
        self.device = pick_device(device)
        self.dtype_name = dtype
        if batch_size is not None and int(batch_size) < 1:
            raise ReverieError(f"batch size must be at least 1 (got {batch_size})")
        self.batch_size = int(batch_size) if batch_size is not None else None
        self.cpu_offload = cpu_offload
        # Batched matmuls and convolutions round differently for different batch shapes (a seed's
        # pixels depend on how many seeds shared its forward pass, never on which). A run renders
        # its remainder as a smaller batch and records each image's batch size; `reproduce` pads
        # to that recorded size, which is what this flag is for.
        self.pad_batches = pad_batches
        self.handoff_path = handoff_path  # the base model's weights for --handoff-steps; None: the hub cache
        self._handoff: Optional[tuple[Any, Any, str]] = None  # (base transformer, runner, label) once loaded
        self.version = f"diffusers {diffusers.__version__}"
        self.pipe = None
        self.preview_every = 0  # steps between live previews (render/preview.py); 0: none
        self.model_label, self.model_hash, self.runtime = "", "", {}
        self._variants: dict[str, Any] = {}
        self._schedulers: dict[str, Any] = {}
        self._embeds: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._embed_cache_size = embed_cache_size
        self.encoder_calls = 0  # how many times the text encoder ran; the bench reads it
        self.forward_seconds = 0.0
        self.images_rendered = 0  # pipeline images, padding included; the bench reads it

    @property
    def noise_channels(self) -> Optional[int]:
        """Latent channels the noise components are laid over; None: this engine cannot search noise."""
        return self.adapter.noise_channels

    # -- loading ---------------------------------------------------------------------------
    def load(self):
        if self.pipe is not None:
            return self.pipe
        import diffusers
        import torch

        quiet_libraries()
        where = resolve_weights(self.profile, self.model_path)
        cls = getattr(diffusers, self.profile.pipeline)
        self.dtype = pick_dtype(self.device, self.dtype_name)
        try:
            if os.path.isfile(where):
                pipe = cls.from_single_file(where, torch_dtype=self.dtype)
            else:
                pipe = cls.from_pretrained(where, torch_dtype=self.dtype)
        except (OSError, ValueError) as e:
            raise ReverieError(f"could not load {self.profile.name} from {where}: {_first_line(e)}") from None
        self._place(pipe)
        if self.batch_size is None:
            self.batch_size = default_batch_size(self.device)
        self._base_scheduler = pipe.scheduler
        self._base_shift = getattr(pipe.scheduler.config, "shift", None)
        self.pipe = pipe
        self.model_label, self.model_hash = self._model_label(where), weights_hash(where)
        self.runtime = {"torch": torch.__version__, "diffusers": diffusers.__version__, "device": str(self.device),
                        "cuda": torch.version.cuda if str(self.device).startswith("cuda") else None}
        torch.set_grad_enabled(False)
        return pipe

    def _model_label(self, where: str) -> str:
        """The weights' folder or file name, as A1111's `Model:` field names a checkpoint."""
        return Path(where).name or str(where)

    def _place(self, pipe) -> None:
        if self.cpu_offload and self.device.startswith("cuda"):
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)

    def _variant(self, control: Optional[Control]):
        """The pipeline for this spec: the base one, or a control/img2img variant sharing its weights."""
        pipe = self.load()
        if control is None:
            return pipe
        kind = "img2img" if control.kind == "img2img" else "controlnet"
        if kind in self._variants:
            return self._variants[kind]
        import diffusers

        if kind == "img2img":
            variant = self.adapter.img2img(pipe)
        else:
            if self.adapter.controlnet_model is None:
                raise ReverieError(f"{control.kind} control needs the {' or '.join(CONTROL_PROFILES)} profile here: "
                                   f"use an img2img reference with {self.profile.name}")
            where = resolve_controlnet(self.profile, self.controlnet_path)
            model_cls = getattr(diffusers, self.adapter.controlnet_model)
            try:
                if os.path.isfile(where):
                    controlnet = model_cls.from_single_file(where, torch_dtype=self.dtype)
                else:
                    controlnet = model_cls.from_pretrained(where, torch_dtype=self.dtype)
            except (OSError, ValueError) as e:
                raise ReverieError(f"could not load the control net from {where}: {_first_line(e)}") from None
            if not (self.cpu_offload and self.device.startswith("cuda")):
                controlnet.to(self.device)
            variant = self.adapter.controlnet(pipe, controlnet)
            if self.cpu_offload and self.device.startswith("cuda"):
                variant.enable_model_cpu_offload()
        variant.set_progress_bar_config(disable=True)
        self._variants[kind] = variant
        return variant

    def _scheduler(self, sampler: str):
        if sampler in COMFY_ONLY_SAMPLERS:
            raise ReverieError(f"sampler {sampler} exists only in ComfyUI: use --engine comfyui, or sampler euler with diffusers")
        if self.adapter.traits.flow:
            if sampler != "euler":
                raise ReverieError(f"sampler {sampler} does not apply to {self.profile.name} (a flow-matching model): use euler")
            return self._base_scheduler
        if sampler not in SAMPLERS:
            raise ReverieError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
        if sampler not in self._schedulers:
            import diffusers

            cls_name, extra = SAMPLERS[sampler]
            self._schedulers[sampler] = getattr(diffusers, cls_name).from_config(self._base_scheduler.config, **extra)
        return self._schedulers[sampler]

    # -- prompt embeddings -----------------------------------------------------------------
    def _embeddings(self, prompt: str, negative: str = "", cfg: bool = False) -> dict[str, Any]:
        """Batch-of-one embeddings for (prompt, negative), named as the pipeline's call takes them."""
        negative = negative if cfg else ""
        key = (prompt, negative, cfg)
        if key in self._embeds:
            self._embeds.move_to_end(key)
            return self._embeds[key]
        pipe = self.load()
        device = pipe._execution_device
        # diffusers counts clip skip from the last layer (1 = penultimate); A1111 and the profile from 1 = none.
        clip_skip = (self.profile.clip_skip - 1) or None
        import torch

        # The pipelines' __call__ runs under no_grad, their encode_prompt does not: without this the
        # cached embeddings would keep the text encoder's whole autograd graph (its activations) alive.
        with torch.no_grad():
            embeds = self.adapter.encode(pipe, prompt, negative, cfg, clip_skip, device)
        self.encoder_calls += 1
        self._embeds[key] = embeds
        while len(self._embeds) > self._embed_cache_size:
            self._embeds.popitem(last=False)
        return embeds

    # -- rendering -------------------------------------------------------------------------
    @staticmethod
    def _group_key(spec: RenderSpec) -> tuple:
        return (spec.prompt, spec.negative, spec.width, spec.height, spec.steps, spec.guidance, spec.sampler,
                spec.shift, spec.blind_steps, spec.control, spec.embed_noise, spec.source, spec.handoff_steps)

    def render(self, specs: Sequence[RenderSpec], progress: ProgressFn | None = None,
               on_output: OutputFn | None = None) -> list[EngineOutput]:
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
                for i, result in zip(chunk, self.render_batch(batch, progress)):
                    out[i] = result
                    if on_output is not None:
                        on_output(result)
                    progress(EngineImage(seed=result.spec.seed, seconds=result.seconds))
        return [o for o in out if o is not None]

    @staticmethod
    def _control_image(control: Control, width: int, height: int):
        from PIL import Image, ImageOps

        try:
            with Image.open(control.image_path) as im:
                # Cover the render's size, cropping the overflow: the pipelines expect the
                # reference at the output size and do not all resize it themselves.
                return ImageOps.fit(im.convert("RGB"), (width, height), Image.Resampling.LANCZOS)
        except (OSError, ValueError) as e:
            raise ReverieError(f"cannot read the {control.kind} image {control.image_path}: {_first_line(e)}; give an existing PNG or JPEG") from None

    def _edit_variant(self, source):
        """The pipeline an edit runs on (reverie.render.editors): the loaded one, or a variant of its parts."""
        from reverie.render import editors

        editor = editors.editor_of(self.profile)
        name = editors.variant_name(editor, source)
        key = f"edit-{name}"
        if key not in self._variants:
            variant = editors.build_variant(self.load(), editor, name)
            variant.set_progress_bar_config(disable=True)
            self._variants[key] = variant
        return editor, self._variants[key]

    def render_batch(self, batch: list[RenderSpec], progress: ProgressFn = no_progress) -> list[EngineOutput]:
        import torch

        spec = batch[0]
        t0 = time.perf_counter()
        if spec.source is not None:
            from reverie.render import editors

            if spec.control is not None:
                raise ReverieError("an edit takes no control reference: drop --ref, the source image is the reference")
            editor, runner = self._edit_variant(spec.source)
            source_image, mask = editors.load_source(spec.source, spec.width, spec.height)
            if editor.kind == "instruction":
                return self._render_instruction_edit(batch, editor, runner, source_image, mask, t0)
        else:
            runner = self._variant(spec.control)
        handoff = max(0, min(int(spec.handoff_steps), spec.steps - 1))
        guidance_kwargs = self.adapter.call_kwargs(spec.guidance)
        if handoff:
            runner, guidance_kwargs = self._handoff_runner(spec, handoff)
        cfg = self.adapter.traits.runs_cfg(spec.guidance) or bool(handoff)  # the base steps run the base's CFG
        seeds = [int(s.seed) for s in batch]
        if self.pad_batches and len(seeds) < self.batch_size:
            # Filler seeds re-create a recorded batch shape; their images are thrown away.
            seeds += [0] * (self.batch_size - len(seeds))
        self.images_rendered += len(seeds)
        real = with_embed_noise(_repeat(self._embeddings(spec.prompt, spec.negative, cfg), len(seeds)), seeds,
                                spec.embed_noise)
        blind = max(0, min(int(spec.blind_steps), spec.steps - 1))
        embeds, swap = self.adapter.blind(real, cfg) if blind else (real, {})

        def on_step(pipeline, step, timestep, kwargs):
            self.on_step(progress, step + 1, spec.steps, seeds[: len(batch)], kwargs.get("latents"))
            if handoff and step == handoff - 1:  # the distilled model takes the latents at the next sigma
                pipeline.transformer = self.pipe.transformer
            # After step `blind - 1` the rest of the schedule sees the real prompt.
            return swap if blind and step == blind - 1 else {}

        if handoff and not takes_step_callback(runner):
            raise ReverieError(f"{self.profile.pipeline} takes no step callback here: leave --handoff-steps out")

        extra: dict[str, Any] = {}
        if spec.source is not None:
            extra.update(editors.img2img_call(spec.source, len(seeds), source_image, mask))
        elif spec.control is not None:
            image = self._control_image(spec.control, spec.width, spec.height)
            if spec.control.kind == "img2img":
                # One copy per seed: a single image is encoded with the batch's first generator, and
                # each image's pixels would depend on which seed came first in its batch.
                extra.update(image=[image] * len(seeds), strength=float(spec.control.strength))
            else:
                extra.update(control_image=image, controlnet_conditioning_scale=float(spec.control.strength))
        runner.scheduler = self._scheduler(spec.sampler)
        if spec.shift is not None and hasattr(runner.scheduler, "set_shift"):
            runner.scheduler.set_shift(float(spec.shift))
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        if any(s.noise_lowfreq for s in batch):
            extra["latents"] = self._lowfreq_latents(runner, spec, generators, batch)
        try:
            images = runner(
                **embeds,
                **extra,
                height=spec.height,
                width=spec.width,
                num_inference_steps=spec.steps,
                **guidance_kwargs,
                generator=generators,
                **({"callback_on_step_end": on_step} if takes_step_callback(runner) else {}),
                output_type="pil",
            ).images[: len(batch)]
        except torch.cuda.OutOfMemoryError as e:  # the caller retries with a smaller batch
            raise MemoryError(str(e)) from None
        finally:
            if self._base_shift is not None and hasattr(runner.scheduler, "set_shift"):
                runner.scheduler.set_shift(self._base_shift)
        if spec.source is not None:
            images = editors.paste_back(images, source_image, mask)
        seconds = (time.perf_counter() - t0) / len(batch)
        self.forward_seconds += seconds * len(batch)
        # The base model's weights decide pixels too: lineage names them beside the distilled model's.
        runtime = {**self.runtime, "handoff_model": self._handoff[2]} if handoff else dict(self.runtime)
        return [EngineOutput(spec=s, image=img, engine=self.name, engine_version=self.version, seconds=seconds,
                             model=self.model_label, model_hash=self.model_hash, runtime=dict(runtime),
                             batch_size=len(seeds))
                for s, img in zip(batch, images)]

    # -- base-model first steps (--handoff-steps) --------------------------------------------
    def handoff_refusal(self) -> str:
        """Why this engine cannot run --handoff-steps for its profile, in one line; "" when it can."""
        base = handoff_base(self.profile.name)
        if base is None:
            pairs = ", ".join(f"{d} (base {b})" for d, b in HANDOFF_BASES.items())
            return (f"{self.profile.name} has no base model of its architecture to hand steps from: "
                    f"--handoff-steps works on {pairs}")
        if not self.adapter.handoff:
            return (f"the {self.name} engine cannot hand {self.profile.traits.label or self.profile.family} steps "
                    f"between models yet (Z-Image only): leave --handoff-steps out")
        if self.cpu_offload and self.device.startswith("cuda"):
            return "--handoff-steps keeps both transformers on the GPU: leave --cpu-offload or --handoff-steps out"
        try:
            self.handoff_weights()
        except ReverieError as e:
            return f"--handoff-steps needs the base model {base}: {e}"
        return ""

    def handoff_weights(self) -> str:
        """Where the base model's weights are: handoff_path, else the hub cache; never downloads."""
        return resolve_weights(get_profile(handoff_base(self.profile.name) or self.profile.name), self.handoff_path)

    def _handoff_runner(self, spec: RenderSpec, handoff: int):
        """The pipeline whose first `handoff` steps run the base transformer, and its guidance kwargs."""
        from reverie.render.handoff import cfg_cutoff

        refusal = self.handoff_refusal()
        if refusal:
            raise ReverieError(refusal)
        if spec.control is not None or spec.source is not None:
            raise ReverieError("--handoff-steps starts from noise: leave it out of edits and reference renders")
        if self.adapter.traits.runs_cfg(spec.guidance):
            raise ReverieError(f"--handoff-steps runs {self.profile.name} without CFG after the base's steps: "
                               "leave --cfg out, or --handoff-steps")
        pipe = self.load()
        if self._handoff is None:
            where = self.handoff_weights()
            cls = type(pipe.transformer)
            try:
                if os.path.isfile(where):
                    base = cls.from_single_file(where, torch_dtype=self.dtype)
                elif (Path(where) / "transformer").is_dir():
                    base = cls.from_pretrained(where, subfolder="transformer", torch_dtype=self.dtype)
                else:
                    base = cls.from_pretrained(where, torch_dtype=self.dtype)
            except (OSError, ValueError) as e:
                raise ReverieError(f"could not load the base model for --handoff-steps from {where}: {_first_line(e)}") from None
            base.to(self.device)
            # The loaded pipeline's own parts with the base transformer: the text encoder and VAE are shared.
            runner = type(pipe)(**{**pipe.components, "transformer": base})
            runner.set_progress_bar_config(disable=True)
            self._handoff = (base, runner, f"{self._model_label(where)} {weights_hash(where)}")
        base, runner, _ = self._handoff
        runner.transformer = base  # the last call's callback left the distilled one in
        base_profile = get_profile(handoff_base(self.profile.name))
        shift = float(spec.shift if spec.shift is not None else (self._base_shift or 1.0))
        return runner, {"guidance_scale": base_profile.guidance,
                        "cfg_truncation": cfg_cutoff(spec.steps, handoff, shift)}

    def _render_instruction_edit(self, batch, editor, runner, source_image, mask, t0) -> list[EngineOutput]:
        """An instruction editor encodes its own prompt (with the source, for Qwen's vision encoder),
        so the embedding cache and the variety knobs do not apply; the loop leaves them off for edits."""
        import torch

        from reverie.render import editors

        spec = batch[0]
        seeds = [int(s.seed) for s in batch]
        if self.pad_batches and len(seeds) < self.batch_size:
            seeds += [0] * (self.batch_size - len(seeds))
        self.images_rendered += len(seeds)
        runner.scheduler = self._scheduler(spec.sampler)
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        # QwenImageEditPlusPipeline takes one prompt a call: its seeds run one after another.
        calls = ([(1, [g]) for g in generators] if editor.pipeline == "QwenImageEditPlusPipeline"
                 else [(len(seeds), generators)])
        try:
            images = []
            for n, gens in calls:
                kwargs = editors.instruction_call(editor, spec, n, source_image, mask)
                images += runner(**kwargs, height=spec.height, width=spec.width, num_inference_steps=spec.steps,
                                 generator=gens, output_type="pil").images
            images = images[: len(batch)]
        except torch.cuda.OutOfMemoryError as e:
            raise MemoryError(str(e)) from None
        images = editors.paste_back(images, source_image, mask)
        seconds = (time.perf_counter() - t0) / len(batch)
        self.forward_seconds += seconds * len(batch)
        return [EngineOutput(spec=s, image=img, engine=self.name, engine_version=self.version, seconds=seconds,
                             model=self.model_label, model_hash=self.model_hash, runtime=dict(self.runtime),
                             batch_size=len(seeds))
                for s, img in zip(batch, images)]

    def _lowfreq_latents(self, runner, spec: RenderSpec, generators, batch: list[RenderSpec]):
        """The initial latents the pipeline would draw from `generators`, low frequencies set per spec."""
        from reverie.render.lowfreq import initial_latents

        if self.noise_channels is None:
            raise ReverieError(f"{self.profile.name} cannot take noise components here: leave --search noise out")
        if spec.source is not None or (spec.control is not None and spec.control.kind == "img2img"):
            raise ReverieError("an edit or img2img reference starts from the image, not from noise: leave --search noise out")
        scale = runner.vae_scale_factor * 2  # the Z-Image pipelines' own rounding of the latent size
        shape = (runner.transformer.config.in_channels, 2 * (spec.height // scale), 2 * (spec.width // scale))
        components = [s.noise_lowfreq for s in batch] + [()] * (len(generators) - len(batch))  # filler seeds
        return initial_latents(generators, shape, components)
    def on_step(self, progress: ProgressFn, step: int, steps: int, seeds: list[int], latents: Any) -> None:
        """Each denoising step is an event ("step n of N"), with a cheap preview of the batch's first
        image every few steps when `preview_every` is set (the web studio sets it; the CLI does not)."""
        preview = None
        if self.preview_every and latents is not None and step < steps and step % self.preview_every == 0:
            from reverie.render.preview import latent_preview

            try:
                preview = latent_preview(latents[0], self.profile.family)
            except Exception:  # a hint only: a latent it cannot read costs the preview, never the render
                preview = None
        progress(Step(step=step, steps=steps, seeds=list(seeds), preview=preview))

    @property
    def identity(self) -> str:
        from reverie.types import canonical_json

        return canonical_json({"engine": self.name, "profile": self.profile.name, "model_path": self.model_path,
                               "dtype": self.dtype_name})

    def close(self) -> None:
        self.pipe = None
        self._variants.clear()
        self._schedulers.clear()
        self._embeds.clear()
        self._handoff = None
