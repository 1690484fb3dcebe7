"""A scripted local server that speaks ComfyUI's protocol, for testing the comfyui engine.

One port, like ComfyUI: POST /prompt, GET /history/{id}, GET /view, POST /upload/image and the
websocket /ws?clientId= (RFC 6455 framing written out below, so the real websocket-client talks
to it over a real socket). It validates every workflow the way ComfyUI does (known node classes,
required inputs, links, model files, sampler names), records what it received, "renders" a
deterministic PNG from the seed, and can be told to die or to hang to test the pool.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import queue
import socket
import struct
import threading
import time
import uuid
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional
from urllib.parse import parse_qs, urlparse

import numpy as np
from PIL import Image

# ComfyUI node classes this server knows, with their required inputs.
NODES: dict[str, tuple[str, ...]] = {
    "UNETLoader": ("unet_name", "weight_dtype"),
    "CLIPLoader": ("clip_name", "type"),
    "DualCLIPLoader": ("clip_name1", "clip_name2", "type"),
    "VAELoader": ("vae_name",),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CLIPSetLastLayer": ("clip", "stop_at_clip_layer"),
    "ModelSamplingAuraFlow": ("model", "shift"),
    "CLIPTextEncode": ("text", "clip"),
    "ConditioningZeroOut": ("conditioning",),
    "FluxGuidance": ("conditioning", "guidance"),
    "EmptySD3LatentImage": ("width", "height", "batch_size"),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "KSampler": ("model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                 "latent_image", "denoise"),
    "KSamplerAdvanced": ("model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                         "negative", "latent_image", "start_at_step", "end_at_step", "return_with_leftover_noise"),
    "VAEDecode": ("samples", "vae"),
    "VAEEncode": ("pixels", "vae"),
    "SaveImage": ("images", "filename_prefix"),
    "LoadImage": ("image",),
    "ControlNetLoader": ("control_net_name",),
    "ControlNetApplyAdvanced": ("positive", "negative", "control_net", "image", "strength", "start_percent",
                                "end_percent"),
    "ModelPatchLoader": ("name",),
    "QwenImageDiffsynthControlnet": ("model", "model_patch", "vae", "image", "strength"),
    "TextGenerate": ("clip", "prompt", "max_length", "sampling_mode"),
    "PreviewAny": ("source",),
    # The newer families' nodes (ComfyUI 0.3.7x+): FLUX.2's latent, Chroma's T5 options, SD3's shift.
    "EmptyFlux2LatentImage": ("width", "height", "batch_size"),
    "T5TokenizerOptions": ("clip", "min_padding", "min_length"),
    "ModelSamplingSD3": ("model", "shift"),
    # The editing templates' nodes (Kontext, FLUX.2 [klein], Qwen-Image-Edit 2511) and inpainting's.
    "ReferenceLatent": ("conditioning", "latent"),
    "CFGNorm": ("model", "strength"),
    "TextEncodeQwenImageEditPlus": ("clip", "prompt", "vae", "image1"),
    "FluxKontextMultiReferenceLatentMethod": ("conditioning", "reference_latents_method"),
    "LoadImageMask": ("image", "channel"),
    "SetLatentNoiseMask": ("samples", "mask"),
    "ImageCompositeMasked": ("destination", "source", "x", "y", "resize_source", "mask"),
}
SAMPLER_NAMES = ("euler", "euler_ancestral", "res_multistep", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc")
SCHEDULERS = ("simple", "sgm_uniform", "normal", "karras", "exponential", "beta")
# Which loader input names a model file, so a server can be given the files it "has".
FILE_INPUTS = ("unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name", "control_net_name", "name")
# The files a server started without `models` lists in /object_info (it accepts any name in a
# workflow): what a ComfyUI set up from the model pages of each family holds.
DEFAULT_FILES: dict[str, list[str]] = {
    "unet_name": ["z_image_turbo_bf16.safetensors", "flux1-schnell.safetensors", "flux1-dev.safetensors"],
    "clip_name": ["qwen_3_4b.safetensors", "clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "t5xxl_fp16.safetensors"],
    "vae_name": ["ae.safetensors"],
    "ckpt_name": ["sd_xl_base_1.0.safetensors", "ponyDiffusionV6XL.safetensors", "v1-5-pruned-emaonly.safetensors"],
    "control_net_name": ["controlnet-canny-sdxl-1.0.safetensors", "controlnet-depth-sdxl-1.0.safetensors",
                         "control_v11p_sd15_canny.pth", "control_v11f1p_sd15_depth.pth"],
    "name": ["Z-Image-Turbo-Fun-Controlnet-Union.safetensors"],
}
# The other lists of choices a real server offers for the inputs reverie sets.
CHOICES: dict[tuple[str, str], list[str]] = {
    ("UNETLoader", "weight_dtype"): ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"],
    ("CLIPLoader", "type"): ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart",
                             "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "flux2",
                             "krea2"],
    ("DualCLIPLoader", "type"): ["sdxl", "sd3", "flux", "hunyuan_video", "hidream"],
    ("LoadImageMask", "channel"): ["alpha", "red", "green", "blue"],
    ("FluxKontextMultiReferenceLatentMethod", "reference_latents_method"): ["offset", "index", "uxo/uno",
                                                                            "index_timestep_zero"],
    ("KSamplerAdvanced", "add_noise"): ["enable", "disable"],
    ("KSamplerAdvanced", "return_with_leftover_noise"): ["disable", "enable"],
}
# Link inputs and their ComfyUI types, for /object_info.
LINK_TYPES = {"model": "MODEL", "clip": "CLIP", "vae": "VAE", "positive": "CONDITIONING", "negative": "CONDITIONING",
              "conditioning": "CONDITIONING", "latent_image": "LATENT", "samples": "LATENT", "pixels": "IMAGE",
              "images": "IMAGE", "control_net": "CONTROL_NET", "model_patch": "MODEL_PATCH", "source": "*"}
FLOATS = ("shift", "guidance", "cfg", "denoise", "strength", "start_percent", "end_percent")
STRINGS = ("text", "prompt", "filename_prefix")

OUTPUT_NODES = ("SaveImage", "PreviewAny")  # what makes a workflow worth running, as in ComfyUI
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def fake_render(seed: int, width: int, height: int) -> Image.Image:
    """The picture this server makes for a seed: blocky colour noise, the same on every machine."""
    rng = np.random.RandomState(seed % 2**32)
    small = rng.randint(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.NEAREST)


class _WsPeer:
    """One websocket client; frames from the server are unmasked text frames."""

    def __init__(self, sock: socket.socket, client_id: str):
        self.sock = sock
        self.client_id = client_id
        self.lock = threading.Lock()

    def send(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", 0x81, n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x81, 126, n)
        else:
            head = struct.pack("!BBQ", 0x81, 127, n)
        with self.lock:
            try:
                self.sock.sendall(head + data)
            except OSError:
                pass

    def read_until_closed(self, rfile) -> None:
        """Read the client's frames (masked) until it closes; answer pings."""
        while True:
            head = rfile.read(2)
            if len(head) < 2:
                return
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", rfile.read(8))[0]
            mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(rfile.read(n)))
            if opcode == 0x8:
                with self.lock:
                    try:
                        self.sock.sendall(b"\x88\x00")
                    except OSError:
                        pass
                return
            if opcode == 0x9:
                with self.lock:
                    self.sock.sendall(bytes([0x8A, len(data)]) + data)


class ComfyServer:
    """Start with `with ComfyServer() as s:`; `s.url` is its address."""

    def __init__(self, models: Optional[dict[str, list[str]]] = None, step_delay: float = 0.0,
                 die_at: Optional[int] = None, hang_at: Optional[int] = None, nodes: Optional[dict] = None,
                 fail_seeds: tuple[int, ...] = (), version: str = "0.3.33", samplers: tuple[str, ...] = SAMPLER_NAMES,
                 text_reply: Optional[Callable[[str, dict], str]] = None):
        """`models`: loader input name -> the files this server has (None: any name is fine, and
        /object_info lists DEFAULT_FILES). `die_at` / `hang_at`: die (close every socket) or hang
        (stop answering) when starting to execute that many-th prompt. `nodes`: the node classes
        it has (default NODES). `fail_seeds`: seeds whose execution fails with an execution_error.
        `samplers`: the KSampler sampler names it knows. `text_reply(prompt, inputs)`: what TextGenerate answers (default: a fixed paragraph)."""
        self.models = models
        self.nodes = NODES if nodes is None else nodes
        self.fail_seeds = set(fail_seeds)
        self.version = version
        self.samplers = samplers
        self.text_reply = text_reply or (lambda prompt, inputs: "A scripted paragraph about the idea.")
        self.gets: list[str] = []  # every GET path, in order (the websocket excepted)
        self.prompt_ids: list[str] = []  # every prompt accepted, in order
        self.deleted: list[str] = []  # prompt ids removed by POST /queue {"delete": [...]}
        self.interrupts: list[Optional[str]] = []  # POST /interrupt calls, with the prompt id they named
        self.started: list[str] = []  # prompt ids whose execution began
        self.pending: list[str] = []  # prompt ids queued and not yet begun, as GET /queue lists them
        self.running: Optional[str] = None
        self._interrupt = threading.Event()
        self.step_delay = step_delay
        self.die_at = die_at
        self.hang_at = hang_at
        self.workflows: list[dict] = []  # every workflow received, in order
        self.executed: list[int] = []  # the seed of every prompt that finished
        self.spans: list[tuple[float, float]] = []  # (start, end) perf_counter of every execution, for busy time
        self.uploads: dict[str, bytes] = {}
        self.outputs: dict[str, bytes] = {}
        self.history: dict[str, dict] = {}
        self.peers: list[_WsPeer] = []
        self.dead = False
        self.hung = False
        self.released = threading.Event()  # set when a hung server is finally let go
        self._queue: "queue.Queue[Optional[tuple]]" = queue.Queue()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._threads = [threading.Thread(target=self.httpd.serve_forever, daemon=True),
                         threading.Thread(target=self._execute_forever, daemon=True)]
        for t in self._threads:
            t.start()

    # -- lifetime ----------------------------------------------------------------------------
    def __enter__(self) -> "ComfyServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def die(self) -> None:
        """Stop listening and drop every connection, as a crashed ComfyUI would."""
        with self._lock:
            if self.dead:
                return
            self.dead = True
        self.released.set()
        self._queue.put(None)
        threading.Thread(target=self.httpd.shutdown, daemon=True).start()
        self.httpd.socket.close()
        for peer in list(self.peers):
            try:
                peer.sock.shutdown(socket.SHUT_RDWR)
                peer.sock.close()
            except OSError:
                pass

    def close(self) -> None:
        self.die()

    # -- execution ---------------------------------------------------------------------------
    def _broadcast(self, client_id: str, kind: str, data: dict) -> None:
        for peer in list(self.peers):
            if peer.client_id == client_id:
                peer.send({"type": kind, "data": data})

    def _execute_forever(self) -> None:
        count = 0
        while (item := self._queue.get()) is not None:
            if item[0] in self.deleted:
                continue
            self.running = item[0]  # before it leaves the pending list: GET /queue always lists it
            if item[0] in self.pending:
                self.pending.remove(item[0])
            count += 1
            if self.die_at == count:
                self.die()
                return
            if self.hang_at == count:
                self.hung = True
                return  # never answers again; handlers block on `released`
            self._execute(*item)

    def _execute(self, prompt_id: str, client_id: str, workflow: dict) -> None:
        self.running = prompt_id
        t0 = time.perf_counter()
        try:
            self._execute_one(prompt_id, client_id, workflow)
        finally:
            self.running = None
            self.spans.append((t0, time.perf_counter()))

    def busy_seconds(self, start: float, end: float) -> float:
        """Seconds spent executing prompts between two perf_counter readings."""
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.spans)

    def _execute_one(self, prompt_id: str, client_id: str, workflow: dict) -> None:
        send = lambda kind, **data: self._broadcast(client_id, kind, {**data, "prompt_id": prompt_id})  # noqa: E731
        self._interrupt.clear()
        self.started.append(prompt_id)
        send("execution_start", timestamp=int(time.time() * 1000))
        send("execution_cached", nodes=[])
        seed, width, height, save_id = 0, 64, 64, None
        for node_id, node in workflow.items():
            cls, inputs = node["class_type"], node["inputs"]
            send("executing", node=node_id, display_node=node_id)
            if cls in ("KSampler", "KSamplerAdvanced"):
                seed = inputs["seed"] if cls == "KSampler" else inputs["noise_seed"]
                first = inputs.get("start_at_step", 0)
                last = min(inputs.get("end_at_step", inputs["steps"]), inputs["steps"])
                for step in range(first, last):
                    time.sleep(self.step_delay)
                    if self._interrupt.is_set():
                        send("execution_interrupted", node_id=node_id, node_type=cls, executed=[])
                        self.history[prompt_id] = {"prompt": [0, prompt_id, workflow, {}, []], "outputs": {},
                                                   "status": {"status_str": "error", "completed": False, "messages": []}}
                        send("executing", node=None)
                        return
                    send("progress", value=step + 1, max=inputs["steps"], node=node_id)
            elif cls == "TextGenerate":
                return self._generate_text(prompt_id, workflow, send)
            elif cls in ("EmptySD3LatentImage", "EmptyLatentImage"):
                width, height = inputs["width"], inputs["height"]
            elif cls == "LoadImage":
                with Image.open(io.BytesIO(self.uploads[inputs["image"]])) as im:
                    width, height = im.size
            elif cls == "SaveImage":
                save_id = node_id
        if seed in self.fail_seeds:
            send("execution_error", node_id="1", node_type="KSampler", exception_type="torch.OutOfMemoryError",
                 exception_message="Allocation on device\nwould exceed allowed memory", traceback=[])
            self.history[prompt_id] = {"prompt": [0, prompt_id, workflow, {}, [save_id]], "outputs": {},
                                       "status": {"status_str": "error", "completed": False, "messages": []}}
            send("executing", node=None)
            return
        buf = io.BytesIO()
        fake_render(seed, width, height).save(buf, format="PNG")
        filename = f"reverie_{len(self.outputs) + 1:05d}_.png"
        self.outputs[filename] = buf.getvalue()
        image = {"filename": filename, "subfolder": "", "type": "output"}
        send("executed", node=save_id, display_node=save_id, output={"images": [image]})
        send("execution_success", timestamp=int(time.time() * 1000))
        # As in ComfyUI, the history is written after execution_success and before the final
        # "executing" with node None, so a client must not rely on the first.
        self.history[prompt_id] = {"prompt": [0, prompt_id, workflow, {}, [save_id]],
                                   "outputs": {save_id: {"images": [image]}},
                                   "status": {"status_str": "success", "completed": True, "messages": []}}
        self.executed.append(seed)
        send("executing", node=None)

    def _generate_text(self, prompt_id: str, workflow: dict, send) -> None:
        """A TextGenerate workflow: the reply goes to the PreviewAny node's "text" output."""
        gen = next(n["inputs"] for n in workflow.values() if n["class_type"] == "TextGenerate")
        preview_id = next(i for i, n in workflow.items() if n["class_type"] == "PreviewAny")
        text = self.text_reply(gen["prompt"], gen)
        send("executed", node=preview_id, display_node=preview_id, output={"text": [text]})
        send("execution_success", timestamp=int(time.time() * 1000))
        self.history[prompt_id] = {"prompt": [0, prompt_id, workflow, {}, [preview_id]],
                                   "outputs": {preview_id: {"text": [text]}},
                                   "status": {"status_str": "success", "completed": True, "messages": []}}
        send("executing", node=None)

    # -- /object_info, shaped like a real server's -------------------------------------------
    def files(self, input_name: str) -> list[str]:
        if self.models is None:
            return list(DEFAULT_FILES.get(input_name, []))
        return list(self.models.get(input_name, []))

    def object_info(self) -> dict:
        info = {}
        for cls, names in self.nodes.items():
            required = {}
            for name in names:
                if name in FILE_INPUTS and cls not in ("LoadImage",):
                    # DualCLIPLoader's two inputs share the text_encoders folder with CLIPLoader.
                    folder = "clip_name" if name.startswith("clip_name") else name
                    required[name] = [self.files(folder), {}]
                elif (cls, name) in CHOICES:
                    required[name] = [CHOICES[cls, name], {}]
                elif name == "sampler_name":
                    required[name] = [list(self.samplers), {"tooltip": "The algorithm used when sampling."}]
                elif name == "scheduler":
                    required[name] = [list(SCHEDULERS), {"tooltip": "The scheduler controls how noise is removed."}]
                elif name == "image" and cls == "LoadImage":
                    required[name] = [sorted(self.uploads), {"image_upload": True}]
                elif name == "sampling_mode":
                    required[name] = ["COMFY_DYNAMICCOMBO_V3", {"options": [{"key": "on"}, {"key": "off"}]}]
                elif name in LINK_TYPES:
                    required[name] = [LINK_TYPES[name], {}]
                elif name in FLOATS:
                    required[name] = ["FLOAT", {"default": 1.0}]
                elif name in STRINGS:
                    required[name] = ["STRING", {"multiline": name != "filename_prefix"}]
                else:
                    required[name] = ["INT", {"default": 0}]
            info[cls] = {"input": {"required": required, "optional": {}}, "input_order": {"required": list(names)},
                         "output": [], "output_is_list": [], "output_name": [], "name": cls, "display_name": cls,
                         "description": "", "python_module": "nodes", "category": "", "output_node": cls in OUTPUT_NODES}
        return info

    # -- validation, as ComfyUI's validate_prompt does it ------------------------------------
    def validate(self, workflow: dict) -> Optional[dict]:
        for node_id, node in workflow.items():
            cls = node.get("class_type")
            if cls not in self.nodes:
                return {"error": {"type": "invalid_prompt", "message": f"Cannot execute because node {cls} does not exist.",
                                  "details": f"Node ID '#{node_id}'", "extra_info": {}}, "node_errors": {}}
        node_errors = {}
        save_ids = [i for i, n in workflow.items() if n["class_type"] in OUTPUT_NODES]
        for node_id, node in workflow.items():
            errors = []
            inputs = node.get("inputs", {})
            for name in NODES[node["class_type"]]:
                if name not in inputs:
                    errors.append({"type": "required_input_missing", "message": "Required input is missing",
                                   "details": name, "extra_info": {"input_name": name}})
            for name, value in inputs.items():
                if isinstance(value, list) and (len(value) != 2 or str(value[0]) not in workflow):
                    errors.append({"type": "bad_linked_input", "message": "Bad linked input", "details": name,
                                   "extra_info": {"input_name": name}})
                allowed = None
                if self.models is not None and name in FILE_INPUTS and name in self.models:
                    allowed = self.models[name]
                elif name == "sampler_name":
                    allowed = self.samplers
                elif name == "scheduler":
                    allowed = SCHEDULERS
                elif node["class_type"] == "LoadImage" and name == "image":
                    allowed = sorted(self.uploads)
                if allowed is not None and value not in allowed:
                    errors.append({"type": "value_not_in_list", "message": "Value not in list",
                                   "details": f"{name}: '{value}' not in {list(allowed)}",
                                   "extra_info": {"input_name": name, "input_config": [list(allowed)],
                                                  "received_value": value}})
            if errors:
                node_errors[node_id] = {"errors": errors, "dependent_outputs": save_ids,
                                        "class_type": node["class_type"]}
        if not save_ids:
            return {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                              "extra_info": {}}, "node_errors": {}}
        if node_errors:
            return {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                              "details": "", "extra_info": {}}, "node_errors": node_errors}
        return None

    # -- HTTP ----------------------------------------------------------------------------------
    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj) -> None:
                self._reply(status, json.dumps(obj).encode())

            def _hung(self) -> bool:
                """A hung server accepts the request and never answers (until it is closed)."""
                if not server.hung:
                    return False
                server.released.wait()
                self.close_connection = True
                return True

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path == "/ws":
                    return self._websocket(parse_qs(url.query).get("clientId", [""])[0])
                if self._hung():
                    return
                if url.path.startswith("/history/"):
                    prompt_id = url.path.rsplit("/", 1)[1]
                    entry = server.history.get(prompt_id)
                    return self._json(200, {prompt_id: entry} if entry else {})
                if url.path == "/view":
                    q = parse_qs(url.query)
                    data = server.outputs.get(q.get("filename", [""])[0])
                    if data is None or q.get("type", ["output"])[0] != "output":
                        return self._reply(404, b"not found", "text/plain")
                    return self._reply(200, data, "image/png")
                if url.path == "/system_stats":
                    server.gets.append(url.path)
                    return self._json(200, {"system": {"os": "posix", "python_version": "3.11", "comfyui_version": server.version,
                                                       "embedded_python": False, "pytorch_version": "2.5.1+cpu"},
                                            "devices": [{"name": "cpu", "type": "cpu", "index": None}]})
                if url.path == "/queue":
                    running = [[0, server.running, {}, {}, []]] if server.running else []
                    return self._json(200, {"queue_running": running,
                                            "queue_pending": [[i + 1, p, {}, {}, []] for i, p in enumerate(server.pending)]})
                if url.path == "/object_info":
                    server.gets.append(url.path)
                    return self._json(200, server.object_info())
                self._reply(404, b"not found", "text/plain")

            def do_POST(self) -> None:
                if self._hung():
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/prompt":
                    payload = json.loads(body)
                    workflow = payload["prompt"]
                    server.workflows.append(workflow)
                    problem = server.validate(workflow)
                    if problem:
                        return self._json(400, problem)
                    prompt_id = uuid.uuid4().hex
                    server.prompt_ids.append(prompt_id)
                    server.pending.append(prompt_id)
                    server._queue.put((prompt_id, payload.get("client_id", ""), workflow))
                    return self._json(200, {"prompt_id": prompt_id, "number": len(server.workflows), "node_errors": {}})
                if self.path == "/queue":
                    payload = json.loads(body or b"{}")
                    for prompt_id in payload.get("delete", []):
                        server.deleted.append(prompt_id)
                        if prompt_id in server.pending:
                            server.pending.remove(prompt_id)
                    return self._reply(200, b"", "text/plain")
                if self.path == "/interrupt":
                    payload = json.loads(body or b"{}")
                    target = payload.get("prompt_id")
                    server.interrupts.append(target)
                    # As in ComfyUI: a prompt_id that is not the running prompt interrupts nothing.
                    if target is None or (server.started and server.started[-1] == target):
                        server._interrupt.set()
                    return self._reply(200, b"", "text/plain")
                if self.path == "/upload/image":
                    head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                    message = BytesParser(policy=email_policy).parsebytes(head + body)
                    for part in message.iter_parts():
                        if part.get_param("name", header="content-disposition") == "image":
                            name = part.get_filename()
                            server.uploads[name] = part.get_payload(decode=True)
                            return self._json(200, {"name": name, "subfolder": "", "type": "input"})
                    return self._reply(400, b"no image", "text/plain")
                self._reply(404, b"not found", "text/plain")

            def _websocket(self, client_id: str) -> None:
                key = self.headers.get("Sec-WebSocket-Key", "")
                accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
                self.send_response(101, "Switching Protocols")
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                self.wfile.flush()
                peer = _WsPeer(self.connection, client_id)
                server.peers.append(peer)
                peer.send({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": server._queue.qsize()}},
                                                      "sid": client_id}})
                try:
                    peer.read_until_closed(self.rfile)
                except OSError:
                    pass
                finally:
                    if peer in server.peers:
                        server.peers.remove(peer)
                    self.close_connection = True

        return Handler
