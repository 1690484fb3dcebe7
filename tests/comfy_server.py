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
from typing import Optional
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
}
SAMPLER_NAMES = ("euler", "euler_ancestral", "res_multistep", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc")
SCHEDULERS = ("simple", "normal", "karras", "exponential", "beta")
# Which loader input names a model file, so a server can be given the files it "has".
FILE_INPUTS = ("unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name", "control_net_name", "name")

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
                 fail_seeds: tuple[int, ...] = ()):
        """`models`: loader input name -> the files this server has (None: any name is fine).
        `die_at` / `hang_at`: die (close every socket) or hang (stop answering) when starting
        to execute that many-th prompt. `nodes`: the node classes it has (default NODES).
        `fail_seeds`: seeds whose execution fails with an execution_error."""
        self.models = models
        self.nodes = NODES if nodes is None else nodes
        self.fail_seeds = set(fail_seeds)
        self.step_delay = step_delay
        self.die_at = die_at
        self.hang_at = hang_at
        self.workflows: list[dict] = []  # every workflow received, in order
        self.executed: list[int] = []  # the seed of every prompt that finished
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
            count += 1
            if self.die_at == count:
                self.die()
                return
            if self.hang_at == count:
                self.hung = True
                return  # never answers again; handlers block on `released`
            self._execute(*item)

    def _execute(self, prompt_id: str, client_id: str, workflow: dict) -> None:
        send = lambda kind, **data: self._broadcast(client_id, kind, {**data, "prompt_id": prompt_id})  # noqa: E731
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
                    send("progress", value=step + 1, max=inputs["steps"], node=node_id)
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

    # -- validation, as ComfyUI's validate_prompt does it ------------------------------------
    def validate(self, workflow: dict) -> Optional[dict]:
        for node_id, node in workflow.items():
            cls = node.get("class_type")
            if cls not in self.nodes:
                return {"error": {"type": "invalid_prompt", "message": f"Cannot execute because node {cls} does not exist.",
                                  "details": f"Node ID '#{node_id}'", "extra_info": {}}, "node_errors": {}}
        node_errors = {}
        save_ids = [i for i, n in workflow.items() if n["class_type"] == "SaveImage"]
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
                    allowed = SAMPLER_NAMES
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
                    return self._json(200, {"system": {"comfyui_version": "scripted"}, "devices": []})
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
                    server._queue.put((prompt_id, payload.get("client_id", ""), workflow))
                    return self._json(200, {"prompt_id": prompt_id, "number": len(server.workflows), "node_errors": {}})
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
