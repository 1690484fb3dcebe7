"""The `comfyui` engine: renders on one or more running ComfyUI servers.

Each spec becomes one API-format workflow (reverie.render.comfy_workflow), queued with
POST /prompt. Progress and completion arrive on the websocket /ws?clientId=...; the PNG comes
from GET /history/{prompt_id} and GET /view. A list of servers is a pool: one loop per server
(serve_server) keeps a couple of prompts queued there and takes more as they finish, so faster
servers take more; a server that refuses, resets or stops answering hands its unfinished specs
back to the others. Under the engine worker each server is a lane fed by every run's jobs at
once (reverie.orchestrator.worker.ComfyLane); render() alone feeds the loops from one call.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from typing import Optional, Sequence

from reverie.render.comfy_preflight import MODEL_FOLDERS, ServerInfo, missing, verdict
from reverie.render.editors import comfy_source_pngs, comfy_spec
from reverie.render.comfy_workflow import (
    build_edit_workflow,
    build_workflow,
    comfy_cfg,
    comfy_files,
    output_node,
    textgen_workflow,
)
from reverie.profiles import DEFAULT_PROFILE, get_profile
from reverie.types import (EngineImage, EngineOutput, EngineProgress, Event, Notice, OutputFn, ProgressFn, Queued, RenderSpec,
                           ReverieError, no_progress)

DEFAULT_URL = "http://127.0.0.1:8188"
ENGINE_VERSION = "1"


class ServerGone(Exception):
    """A server refused, reset or stopped answering; its work moves to the others."""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def parse_servers(servers: str | Sequence[str] | None) -> list[str]:
    if servers is None or (not isinstance(servers, str) and not list(servers)):
        servers = os.environ.get("REVERIE_COMFYUI_URL") or DEFAULT_URL
    items = servers.split(",") if isinstance(servers, str) else [u for s in servers for u in str(s).split(",")]
    urls = []
    for url in (u.strip().rstrip("/") for u in items):
        if not url:
            continue
        if "://" not in url:
            url = f"http://{url}"
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ReverieError(f"{url!r} is not a ComfyUI address: pass --comfy-url http://HOST:8188")
        if url not in urls:
            urls.append(url)
    if not urls:
        raise ReverieError(f"no ComfyUI address given: pass --comfy-url {DEFAULT_URL}")
    return urls


def describe_rejection(url: str, body: dict, files: dict) -> str:
    """ComfyUI's 400 answer to POST /prompt, as one line that names the fix."""
    node_errors = body.get("node_errors") or {}
    for node_id, node in node_errors.items():
        class_type = node.get("class_type", "?")
        for error in node.get("errors") or []:
            info = error.get("extra_info") or {}
            value = info.get("received_value")
            if error.get("type") == "value_not_in_list" and class_type in MODEL_FOLDERS:
                key = next((k for k, v in files.items() if v == value), info.get("input_name", "file"))
                return (f"ComfyUI at {url} has no {key} file {value}: put it in {MODEL_FOLDERS[class_type]} "
                        f"or pass --comfy-file {key}=NAME")
            return one_line(f"ComfyUI at {url} rejected node {node_id} ({class_type}): {error.get('message', '')}: "
                            f"{error.get('details', '')}")
    error = body.get("error") or {}
    message = error.get("message", "") if isinstance(error, dict) else str(error)
    details = error.get("details", "") if isinstance(error, dict) else ""
    return one_line(f"ComfyUI at {url} rejected the workflow: {message} {details} "
                    f"(update ComfyUI, or pick another --profile)")


class ComfyClient:
    """HTTP and websocket calls to one ComfyUI server; every network failure is ServerGone."""

    def __init__(self, url: str, timeout: float):
        self.url = url
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex
        self.uploaded: set[str] = set()
        self.worker = url  # lineage's name for this server; preflight adds the version

    def _call(self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[dict] = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise ServerGone(one_line(f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__)) from None

    def _json(self, method: str, path: str, payload: Optional[dict] = None) -> tuple[int, dict]:
        body = json.dumps(payload).encode() if payload is not None else None
        status, data = self._call(method, path, body, {"Content-Type": "application/json"} if body else None)
        try:
            return status, json.loads(data or b"{}")
        except ValueError:
            if status >= 500:
                raise ServerGone(f"HTTP {status}") from None
            raise ReverieError(f"{self.url}{path} answered HTTP {status} with something that is not JSON: "
                               f"check that --comfy-url points at ComfyUI") from None

    def queue_prompt(self, workflow: dict, files: dict) -> str:
        status, body = self._json("POST", "/prompt", {"prompt": workflow, "client_id": self.client_id})
        if status == 200 and body.get("prompt_id"):
            return str(body["prompt_id"])
        if status >= 500:
            raise ServerGone(f"HTTP {status} from /prompt")
        raise ReverieError(describe_rejection(self.url, body, files))

    def server_info(self) -> ServerInfo:
        """/system_stats and /object_info: what preflight checks workflows against."""
        status, stats = self._json("GET", "/system_stats")
        version = str(((stats.get("system") or {}).get("comfyui_version")) or "unknown") if status == 200 else "unknown"
        status, nodes = self._json("GET", "/object_info")
        if status >= 500:
            raise ServerGone(f"HTTP {status} from /object_info")
        if status != 200 or not isinstance(nodes, dict) or not nodes:
            raise ReverieError(f"{self.url}/object_info answered HTTP {status} without node classes: "
                               f"check that --comfy-url points at ComfyUI")
        return ServerInfo(self.url, version, nodes)

    def cancel(self, ours: Sequence[str], started: Optional[str]) -> None:
        """Delete our own queued prompts and interrupt our own running one; nobody else's.

        GET /queue says which of ours is running now (our websocket may not have told us yet).
        The prompt id in /interrupt makes a recent ComfyUI stop only that prompt; an older one
        ignores it and stops what runs, which /queue just said is ours."""
        status, q = self._json("GET", "/queue")
        if status == 200:
            running = [item[1] for item in q.get("queue_running") or [] if len(item) > 1 and item[1] in ours]
            queued = [item[1] for item in q.get("queue_pending") or [] if len(item) > 1 and item[1] in ours]
        else:
            running, queued = ([started] if started else []), [p for p in ours if p != started]
        json_type = {"Content-Type": "application/json"}
        if queued:
            self._call("POST", "/queue", json.dumps({"delete": queued}).encode(), json_type)
        for prompt_id in running:
            self._call("POST", "/interrupt", json.dumps({"prompt_id": prompt_id}).encode(), json_type)

    def ahead_of(self, ours: Sequence[str]) -> Optional[int]:
        """How many prompts (another client's, or ours) run or wait before the first of ours in
        GET /queue; None when one of ours runs, or the server does not say."""
        status, q = self._json("GET", "/queue")
        if status != 200:
            return None
        running = [item for item in q.get("queue_running") or [] if len(item) > 1]
        if any(item[1] in ours for item in running):
            return None
        # ComfyUI lists the pending queue in heap order: its first field is the place in line.
        pending = sorted((item for item in q.get("queue_pending") or [] if len(item) > 1), key=lambda item: item[0])
        for place, item in enumerate(pending):
            if item[1] in ours:
                return len(running) + place
        return None

    def upload_image(self, name: str, png: bytes) -> str:
        if name in self.uploaded:
            return name
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode() + png + b"\r\n",
            f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'.encode(),
            f"--{boundary}--\r\n".encode(),
        ]
        status, data = self._call("POST", "/upload/image", b"".join(parts),
                                  {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            raise ReverieError(f"ComfyUI at {self.url} refused the control image upload (HTTP {status}): "
                               f"check the server's input folder is writable")
        info = json.loads(data)
        stored = f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]
        self.uploaded.add(name)
        return stored

    def history(self, prompt_id: str) -> Optional[dict]:
        status, body = self._json("GET", f"/history/{urllib.parse.quote(prompt_id)}")
        if status != 200:
            raise ServerGone(f"HTTP {status} from /history")
        return body.get(prompt_id)

    def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        status, data = self._call("GET", f"/view?{query}")
        if status != 200:
            raise ServerGone(f"HTTP {status} from /view")
        return data

    def connect(self, poll: float):
        import websocket

        parsed = urllib.parse.urlparse(self.url)
        ws_url = f"{'wss' if parsed.scheme == 'https' else 'ws'}://{parsed.netloc}{parsed.path}/ws?clientId={self.client_id}"
        try:
            ws = websocket.create_connection(ws_url, timeout=self.timeout)
        except (websocket.WebSocketException, OSError) as e:
            raise ServerGone(one_line(f"{type(e).__name__}: {e}")) from None
        ws.settimeout(poll)
        return ws


POOL_DEPTH = 2  # prompts each server of a pool holds: one running, one waiting, so it never waits on us


class Ticket:
    """One spec handed to a server loop, with the engine whose profile and files build its
    workflow (a server serves several engines' jobs), and whose work it is."""

    __slots__ = ("spec", "engine", "owner")

    def __init__(self, spec: RenderSpec, engine: "ComfyUIEngine", owner):
        self.spec, self.engine, self.owner = spec, engine, owner


class _Batch:
    """The work of one render() call, shared by the server loops: the feed serve_server takes
    from. (The engine worker's lanes feed the same loop from every run's jobs at once.)"""

    def __init__(self, engine: "ComfyUIEngine", specs: Sequence[RenderSpec], workers: int = 1):
        self.engine = engine
        self.specs = list(specs)
        self.workers = workers  # servers rendering this call (those that passed preflight)
        self.workers_gone = 0
        self.pending: deque[int] = deque(range(len(self.specs)))
        self.results: dict[int, EngineOutput] = {}
        self.fatal: Optional[BaseException] = None
        self.events: "queue.Queue[Event | EngineOutput]" = queue.Queue()  # for the calling thread
        self.gone: dict[str, str] = {}
        self.cond = threading.Condition()

    # -- the feed --------------------------------------------------------------------------
    def running(self) -> bool:
        return not self.done()

    def take(self) -> Optional[Ticket]:
        with self.cond:
            if not self.pending or self.fatal is not None:
                return None
            index = self.pending.popleft()
            return Ticket(self.specs[index], self.engine, index)

    def wait(self) -> bool:
        """Block while another server might still hand work back; False once the call is over."""
        with self.cond:
            while not self.pending and not self.done():
                self.cond.wait(0.5)
            return bool(self.pending) and self.fatal is None

    def abandoned(self, ticket: Ticket) -> bool:
        return self.fatal is not None

    def finish(self, ticket: Ticket, output: EngineOutput, url: str) -> None:
        with self.cond:
            if ticket.owner in self.results:
                return
            self.results[ticket.owner] = output
            self.cond.notify_all()
        self.events.put(output)
        self.events.put(EngineImage(seed=output.spec.seed, seconds=output.seconds, server=url, error=output.error))

    def event(self, ticket: Ticket, event: Event) -> None:
        self.events.put(event)

    def fail(self, ticket: Optional[Ticket], error: BaseException) -> None:
        with self.cond:
            if self.fatal is None:
                self.fatal = error
            self.cond.notify_all()

    def release(self, ticket: Ticket) -> None:
        """A ticket taken off its server after a fatal error: nothing more to do."""

    def lost(self, url: str, reason: str, tickets: Sequence[Ticket]) -> None:
        with self.cond:
            self.gone[url] = reason
            self.workers_gone += 1
            # Back to the front: these were queued first and have waited longest.
            self.pending.extendleft(sorted((t.owner for t in tickets if t.owner not in self.results), reverse=True))
            self.cond.notify_all()
            tell = bool(self.pending) and self.workers_gone < self.workers
        # With no server left the call's one error line says it all; "move to the others" would mislead.
        if tell:
            self.events.put(Notice(message=f"ComfyUI at {url} is gone ({reason}); its renders move to the other servers"))

    def done(self) -> bool:
        return self.fatal is not None or len(self.results) == len(self.specs)



class ComfyUIEngine:
    name = "comfyui"
    version = ENGINE_VERSION

    def __init__(
        self,
        servers: str | Sequence[str] | None = None,
        profile: str = DEFAULT_PROFILE,
        files: Optional[dict] = None,
        timeout: float = 30.0,
        stall_timeout: float = 900.0,
        poll_interval: float = 2.0,
        queue_depth: Optional[int] = None,
    ):
        """`timeout` bounds every HTTP call and the websocket connect; `stall_timeout` is how
        long a server may go without a word while it holds our prompts (first loads of large
        models are slow); `queue_depth` is how many prompts each server holds at once. By
        default each server of a pool holds POOL_DEPTH (one running, one waiting: it never
        waits on us, and `--n 4` on two servers is two and two), and a lone server called
        directly gets the whole call at once."""
        self.servers = parse_servers(servers)
        self.profile = get_profile(profile)
        self.files = comfy_files(self.profile, files)
        self.user_files = dict(files or {})  # chosen over the profile's: each spec records them
        self.timeout = float(timeout)
        self.stall_timeout = float(stall_timeout)
        self.poll_interval = float(poll_interval)
        self.queue_depth = max(1, int(queue_depth)) if queue_depth else 0  # 0: the defaults above
        self._info: dict[str, ServerInfo] = {}  # read once per server, on first need
        self._told: set[str] = set()  # preflight notices already given

    # -- preflight -------------------------------------------------------------------------
    def server_info(self) -> tuple[dict[str, ServerInfo], dict[str, str]]:
        """Each server's /system_stats and /object_info, read once: (url -> info, url -> why it did not answer)."""
        gone = {}
        for url in self.servers:
            if url not in self._info:
                try:
                    self._info[url] = ComfyClient(url, self.timeout).server_info()
                except ServerGone as e:
                    gone[url] = str(e)  # asked again next call: it may be starting
        return {u: self._info[u] for u in self.servers if u in self._info}, gone

    def lacks(self, info: ServerInfo, specs: Sequence[RenderSpec]) -> list[str]:
        """Everything `info`'s server lacks to render these specs (empty: it can)."""
        workflows = {}
        for spec in specs:
            spec = comfy_spec(spec)  # a Z-Image edit's source is its img2img image
            # A control image is uploaded when it is used; any name stands in for it here.
            if spec.source is not None:
                wf = build_edit_workflow(spec, self.profile, self.files, "reverie_preflight.png",
                                         "reverie_preflight_mask.png" if spec.source.mask_path else None)
            else:
                wf = build_workflow(spec, self.profile, self.files, "reverie_preflight.png" if spec.control else None)
            shape = json.dumps([(n["class_type"], {k: v for k, v in n["inputs"].items() if isinstance(v, str)})
                                for n in wf.values()], sort_keys=True)
            workflows.setdefault(shape, wf)  # one per distinct set of nodes and names, not per seed
        return missing(info.nodes, workflows.values(), self.files)

    def preflight(self, specs: Sequence[RenderSpec], progress: ProgressFn | None = None) -> tuple[list[ServerInfo], dict[str, str]]:
        """The servers that can render every spec, and the ones that did not answer.

        Servers that lack something are left out with one notice; with none left, one error
        line names every missing piece of every server."""
        progress = progress or no_progress
        infos, gone = self.server_info()
        usable, left_out = [], []
        for info in infos.values():
            lacks = self.lacks(info, specs)
            if lacks:
                left_out.append(verdict(info, self.profile.name, lacks))
            else:
                usable.append(info)
        if not usable:
            if not left_out:
                reasons = "; ".join(f"{url}: {why}" for url, why in gone.items())
                raise ReverieError(f"no ComfyUI server answers ({reasons}); 0 of {len(specs)} images were rendered: "
                                   f"start ComfyUI or pass --comfy-url")
            lines = left_out + [f"ComfyUI at {url} does not answer ({why})" for url, why in gone.items()]
            raise ReverieError(lines[0] if len(lines) == 1 else "no ComfyUI server can render this: " + " | ".join(lines))
        if left_out:
            message = (" | ".join(left_out) + f"; rendering on {len(usable)} of {len(self.servers)} servers")
            if message not in self._told:
                self._told.add(message)
                progress(Notice(message=f"left out of the ComfyUI pool: {message}"))
        return usable, gone

    # -- one call --------------------------------------------------------------------------
    def render(self, specs: Sequence[RenderSpec], progress: ProgressFn | None = None,
               on_output: OutputFn | None = None) -> list[EngineOutput]:
        """Render on the pool alone (the engine worker instead gives each server a lane that
        serves every run's jobs): a loop per server takes seeds from this call."""
        progress = progress or no_progress
        if not specs:
            return []
        # Every workflow is built and checked against each server before anything is queued.
        usable, gone = self.preflight(specs, progress)
        batch = _Batch(self, specs, workers=len(usable))
        batch.gone.update(gone)
        depth = self.queue_depth or (len(specs) if len(self.servers) == 1 else POOL_DEPTH)
        clients = []
        for info in usable:
            client = ComfyClient(info.url, self.timeout)
            client.worker = info.worker
            clients.append(client)
        workers = [threading.Thread(target=self._serve_guarded, args=(client, batch, depth), name=f"reverie-comfyui-{i}",
                                    daemon=True) for i, client in enumerate(clients)]
        for w in workers:
            w.start()
        try:
            # Outputs and events are handed on on this thread, so callers need no locks.
            while any(w.is_alive() for w in workers) or not batch.events.empty():
                try:
                    item = batch.events.get(timeout=0.1)
                except queue.Empty:
                    continue
                if not isinstance(item, EngineOutput):
                    progress(item)
                elif on_output is not None:
                    try:
                        on_output(item)
                    except BaseException as e:  # the caller cannot take more: stop queueing, then raise
                        batch.fail(None, e)
        except BaseException as e:  # Ctrl-C lands here: the workers take our prompts off the servers first
            batch.fail(None, e)
            for w in workers:
                w.join(self.timeout + self.poll_interval)
            raise
        if batch.fatal is not None:
            raise batch.fatal
        if len(batch.results) < len(specs):
            raise self.all_gone_error(batch.gone, len(batch.results), len(specs))
        return [batch.results[i] for i in range(len(specs))]

    def _serve_guarded(self, client: "ComfyClient", batch: _Batch, depth: int) -> None:
        try:
            serve_server(client, batch, depth=depth, poll_interval=self.poll_interval, stall_timeout=self.stall_timeout)
        except BaseException as e:  # a user-facing error (or a bug) ends the whole call
            batch.fail(None, e)

    @staticmethod
    def all_gone_error(gone: dict[str, str], done: int, total: int) -> ReverieError:
        """The one line once no server of the pool answers."""
        reasons = "; ".join(f"{url}: {why}" for url, why in gone.items())
        return ReverieError(f"no ComfyUI server answers ({reasons}); {done} of {total} images were rendered: "
                            f"start ComfyUI or pass --comfy-url")

    @property
    def lane_depth(self) -> int:
        """Prompts a server holds at once when it is a lane of the engine worker."""
        return self.queue_depth or POOL_DEPTH


    @property
    def identity(self) -> str:
        from reverie.types import canonical_json

        # The servers in the pool may change between attempts; the model files may not.
        return canonical_json({"engine": self.name, "profile": self.profile.name, "files": self.files})

    def close(self) -> None:
        return None

    def text_generator(self) -> Optional["TextGenerator"]:
        """The servers' own language model for the dreamer, when one has it (see text_generator)."""
        return text_generator(self)


def serve_server(client: ComfyClient, feed, *, depth: int, poll_interval: float, stall_timeout: float) -> None:
    """Keep up to `depth` prompts of `feed`'s work queued on one server until the feed stops.

    The feed (a render() call's _Batch, or an engine worker lane's view of every run's jobs)
    hands out Tickets and takes back outputs, events and errors. A ticket whose work was
    abandoned (its job cancelled or failed) has its prompt taken off the server. When the
    server refuses, resets or stops answering, every ticket it held goes back through
    feed.lost() and this returns. A ticket's own error (a workflow the server rejects) fails
    that ticket's work, and the loop goes on."""
    inflight: dict[str, dict] = {}
    ws = None
    holding: list[Ticket] = []  # taken, not yet queued on the server
    heard = time.monotonic()
    told: dict[str, int] = {}  # the place in the server's line last announced
    try:
        while feed.running():
            while len(inflight) < depth and (ticket := feed.take()) is not None:
                holding.append(ticket)
                if ws is None:
                    ws = client.connect(poll_interval)
                if not inflight:
                    heard = time.monotonic()  # the stall clock runs only while the server holds our work
                try:
                    prompt_id, node = _submit(client, ticket)
                except ServerGone:
                    raise
                except BaseException as e:  # this work's own problem (a rejected workflow): it fails alone
                    holding.remove(ticket)
                    feed.fail(ticket, e)
                    continue
                holding.remove(ticket)
                inflight[prompt_id] = {"ticket": ticket, "node": node, "t0": time.perf_counter(), "started": False}
            dropped = {pid: job for pid, job in inflight.items() if feed.abandoned(job["ticket"])}
            if dropped:
                _cancel(client, dropped)
                for pid, job in dropped.items():
                    inflight.pop(pid)
                    feed.release(job["ticket"])
            if not inflight:
                if feed.wait():
                    continue
                return
            message = _receive(ws)
            if message is None or message.get("type") == "status":  # quiet, or the server's queue moved
                _announce_queue(client, feed, inflight, told)
            if message is None:
                if time.monotonic() - heard > stall_timeout:
                    raise ServerGone(f"no word for {stall_timeout:.0f} s")
                # A quiet socket may have missed a message: the history says what finished.
                for prompt_id in list(inflight):
                    entry = client.history(prompt_id)
                    if entry is not None:
                        # Popped only once collected: a server that dies while we download
                        # the image must hand this job back, not lose it.
                        _collect(client, feed, inflight[prompt_id], entry)
                        inflight.pop(prompt_id)
                continue
            heard = time.monotonic()
            _handle(client, feed, inflight, message)
    except ServerGone as e:
        tickets = holding + [job["ticket"] for job in inflight.values()]
        holding.clear()
        inflight.clear()  # handed back: not ours to cancel on this server any more
        feed.lost(client.url, str(e), tickets)
    finally:
        if inflight:  # the feed stopped (a fatal error, the worker closing): our prompts leave the server
            _cancel(client, inflight)
            for job in inflight.values():
                feed.release(job["ticket"])
        for ticket in holding:
            feed.release(ticket)
        if ws is not None:
            try:
                ws.close(timeout=0.5)
            except Exception:
                pass


def _announce_queue(client: ComfyClient, feed, inflight: dict, told: dict) -> None:
    """Our work waits behind other prompts on a shared server: say how many, once per change, as
    a `queued` event (a line on the CLI, the request's state on the web), rather than a silent wait."""
    if not inflight or any(job["started"] for job in inflight.values()):
        return
    try:
        ahead = client.ahead_of(list(inflight))
    except (ServerGone, ReverieError):
        return  # the loop finds out for itself whether the server is gone
    if ahead is None or ahead == told.get("ahead"):
        return
    told["ahead"] = ahead
    if ahead == 0:
        return  # ours is next: nothing to wait for
    first = next(iter(inflight.values()))["ticket"]
    feed.event(first, Queued(server=client.url, ahead=ahead, seed=first.spec.seed,
                             message=f"waiting in the queue of ComfyUI at {client.url}: {ahead} "
                                     f"prompt{'s' if ahead != 1 else ''} ahead of ours"))


def _cancel(client: ComfyClient, inflight: dict) -> None:
    """Our prompts still queued there are deleted, our running one interrupted."""
    started = next((pid for pid, job in inflight.items() if job["started"]), None)
    try:
        client.cancel(list(inflight), started)
    except (ServerGone, ReverieError):
        pass  # the server is gone too, or refuses: nothing more we can do for it


def _submit(client: ComfyClient, ticket: Ticket) -> tuple[str, str]:
    spec, engine = comfy_spec(ticket.spec), ticket.engine  # the output keeps the edit's own spec
    image_name = None
    if spec.control is not None:
        image_name = client.upload_image(*_control_png(spec))
    files = {**engine.files, **dict(spec.model_files)}  # a spec from another run carries its own files
    if spec.source is not None:  # an instruction editor's or an inpainting edit's own graph
        names = [client.upload_image(name, png) for name, png in comfy_source_pngs(spec)]
        workflow = build_edit_workflow(spec, engine.profile, files, names[0], names[1] if len(names) > 1 else None)
        return client.queue_prompt(workflow, files), output_node(workflow)
    workflow = build_workflow(spec, engine.profile, files, image_name)
    return client.queue_prompt(workflow, files), output_node(workflow)


def _control_png(spec: RenderSpec) -> tuple[str, bytes]:
    """The control image at the render size, named by its content so each server gets it once."""
    from PIL import Image

    control = spec.control
    try:
        with Image.open(control.image_path) as im:
            im = im.convert("RGB")
            if im.size != (spec.width, spec.height):
                im = im.resize((spec.width, spec.height), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except OSError as e:
        raise ReverieError(f"cannot read the control image {control.image_path}: {e}; pass another reference") from None
    return f"reverie_{control.image_sha[:16]}_{spec.width}x{spec.height}.png", buf.getvalue()


def _receive(ws) -> Optional[dict]:
    import websocket

    try:
        raw = ws.recv()
    except websocket.WebSocketTimeoutException:
        return None
    except (websocket.WebSocketException, OSError) as e:
        raise ServerGone(one_line(f"websocket {type(e).__name__}: {e}")) from None
    if isinstance(raw, bytes):
        return {}  # live previews; a sign of life, nothing to read
    if raw == "":
        raise ServerGone("websocket closed")
    try:
        return json.loads(raw)
    except ValueError:
        return {}


def _handle(client: ComfyClient, feed, inflight: dict, message: dict) -> None:
    kind, data = message.get("type"), message.get("data") or {}
    job = inflight.get(data.get("prompt_id", ""))
    if job is None:
        return
    spec = job["ticket"].spec
    if kind == "execution_start":
        job["t0"] = time.perf_counter()  # queue wait is not render time
        job["started"] = True
    elif kind == "progress":
        feed.event(job["ticket"], EngineProgress(seed=spec.seed, step=data.get("value"), steps=data.get("max"),
                                                 server=client.url))
    elif (kind == "executing" and data.get("node") is None) or kind == "execution_success":
        entry = client.history(data["prompt_id"])
        if entry is not None:
            _collect(client, feed, job, entry)
            inflight.pop(data["prompt_id"])
    elif kind in ("execution_error", "execution_interrupted"):
        inflight.pop(data["prompt_id"])
        # ComfyUI's own reason: the node that failed and its exception, so a run where every
        # render failed can say why.
        where = f"{data['node_type']} (node {data.get('node_id')})" if data.get("node_type") else "the workflow"
        why = one_line(data.get("exception_message") or kind.replace("_", " "))
        if data.get("exception_type"):
            why = f"{data['exception_type']}: {why}"
        _finish(feed, job, None, f"ComfyUI at {client.url} failed in {where}: {why}", client)


def _collect(client: ComfyClient, feed, job: dict, entry: dict) -> None:
    from PIL import Image

    images = ((entry.get("outputs") or {}).get(job["node"]) or {}).get("images") or []
    if not images:
        status = entry.get("status") or {}
        _finish(feed, job, None, f"ComfyUI at {client.url} returned no image "
                f"(status {status.get('status_str', 'unknown')})", client)
        return
    data = client.view(images[0])
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except OSError:
        raise ServerGone("/view did not return an image") from None
    _finish(feed, job, image.convert("RGB"), "", client)


def _finish(feed, job: dict, image, error: str, client: ComfyClient) -> None:
    ticket = job["ticket"]
    seconds = time.perf_counter() - job["t0"]
    engine, spec = ticket.engine, ticket.spec
    files = {**engine.files, **dict(spec.model_files)}
    weights = files.get("checkpoint") or files.get("unet") or ""
    # What ComfyUI ran: the weights file it loaded and the KSampler's CFG (FLUX: 1, its guidance
    # goes in FluxGuidance), so the PNG states them rather than the spec's diffusers terms.
    output = EngineOutput(spec=spec, image=image, engine=engine.name, engine_version=engine.version, seconds=seconds,
                          error=error, worker=client.worker, cfg=comfy_cfg(spec, engine.profile),
                          model=weights.rsplit(".", 1)[0] if weights else "")
    feed.finish(ticket, output, client.url)



def profile_spec(profile, seed: int = 0, prompt: str = "preflight") -> RenderSpec:
    """A plain text-to-image spec with the profile's own settings: what `models --comfy-url` checks."""
    side = profile.multiple * 8
    return RenderSpec(prompt=prompt, negative=profile.default_negative, seed=seed, width=side, height=side,
                      steps=profile.steps, guidance=profile.guidance, profile=profile.name, sampler=profile.sampler,
                      shift=profile.shift)


def preflight_workflow(profile, files: dict) -> dict:
    """The workflow `models --comfy-url` checks a profile by: its text-to-image graph, or for an
    editor-only profile (Qwen-Image-Edit, Kontext) its editing graph, so the preflight names the
    editing nodes and files the server lacks."""
    from reverie.profiles import EDITORS, FAMILIES
    from reverie.render.comfy_workflow import EDIT_TEMPLATES
    from reverie.types import Source

    family = FAMILIES.get(profile.family)
    if profile.name in EDITORS and profile.name in EDIT_TEMPLATES and family is not None \
            and profile.pipeline != family.pipeline:
        spec = profile_spec(profile)
        spec = spec.with_(source=Source(image_sha="0" * 64, image_path="preflight.png", width=spec.width,
                                        height=spec.height, instruction="preflight"))
        return build_edit_workflow(spec, profile, files, "reverie_preflight.png")
    return build_workflow(profile_spec(profile), profile, files)


def textgen_lacks(info: ServerInfo, profile, files: dict) -> list[str]:
    """What a server lacks to run the TextGenerate dreamer for a profile (empty: it can)."""
    if not profile.traits.chat_encoder:
        return [f"a text encoder that writes ({profile.name} has none)"]
    workflow = textgen_workflow(files, "x", 16, {"seed": 0})
    return missing(info.nodes, [workflow], files)


def server_support(servers: str | Sequence[str], files: Optional[dict] = None, timeout: float = 30.0) -> list[dict]:
    """For each server and profile: can it render the profile, what it lacks, and whether the
    TextGenerate dreamer can write prompts there. One line of error for a server that does not answer."""
    from reverie.profiles import PROFILES

    rows = []
    for url in parse_servers(servers):
        try:
            info = ComfyClient(url, timeout).server_info()
        except ServerGone as e:
            raise ReverieError(f"ComfyUI at {url} does not answer ({e}): start ComfyUI or pass another --comfy-url") from None
        for profile in PROFILES.values():
            names = comfy_files(profile, files)
            try:
                lacks = missing(info.nodes, [preflight_workflow(profile, names)], names)
            except ReverieError as e:  # a profile reverie has no ComfyUI workflow for (the editors, so far)
                lacks = [f"reverie has no ComfyUI workflow for {profile.name} yet ({e})"]
            rows.append({"profile": profile.name, "server": url, "version": info.version, "ok": not lacks, "lacks": lacks,
                         "dreamer": not textgen_lacks(info, profile, names)})
    return rows


class TextGenerator:
    """ComfyUI's TextGenerate on one server, over the profile's text encoder: a language model
    that needs no other server and no download. Raises ReverieError when it gives no answer."""

    def __init__(self, info: ServerInfo, files: dict, timeout: float, stall_timeout: float, poll_interval: float):
        self.base_url = info.url
        self.model = f"ComfyUI TextGenerate {files.get('clip', '')}"
        self.files = files
        self.timeout, self.stall_timeout, self.poll_interval = timeout, stall_timeout, poll_interval

    def __call__(self, prompt: str, max_length: int, sampling: dict) -> str:
        client = ComfyClient(self.base_url, self.timeout)
        ws = None
        try:
            ws = client.connect(self.poll_interval)
            workflow = textgen_workflow(self.files, prompt, max_length, sampling)
            node = next(i for i, n in workflow.items() if n["class_type"] == "PreviewAny")
            prompt_id = client.queue_prompt(workflow, self.files)
            started = None
            try:
                heard = time.monotonic()
                while True:
                    message = _receive(ws)
                    data = (message or {}).get("data") or {}
                    if message and data.get("prompt_id") == prompt_id:
                        heard = time.monotonic()
                        if message.get("type") == "execution_start":
                            started = prompt_id
                        if message.get("type") in ("execution_error", "execution_interrupted"):
                            prompt_id = None  # it ended on the server: nothing of ours left there
                            why = one_line(data.get("exception_message") or message["type"].replace("_", " "))
                            raise ReverieError(f"ComfyUI at {self.base_url} failed in "
                                               f"{data.get('node_type') or 'TextGenerate'}: {why}")
                    elif message is None and time.monotonic() - heard > self.stall_timeout:
                        raise ReverieError(f"ComfyUI at {self.base_url} gave no answer for {self.stall_timeout:.0f} s")
                    entry = client.history(prompt_id) if message is None or message.get("type") in (
                        "execution_success", "executing") else None
                    if entry is not None and (entry.get("status") or {}).get("completed", True):
                        texts = ((entry.get("outputs") or {}).get(node) or {}).get("text") or []
                        prompt_id = None
                        return str(texts[0]) if texts else ""
            finally:
                if prompt_id is not None:  # given up on (a stall, Ctrl-C, a lost socket): off the server
                    try:
                        client.cancel([prompt_id], started)
                    except (ServerGone, ReverieError):
                        pass  # the server is gone or refuses: nothing of ours runs there that we can stop
        except ServerGone as e:
            raise ReverieError(f"ComfyUI at {self.base_url} is gone ({e})") from None
        finally:
            if ws is not None:
                try:
                    ws.close(timeout=0.5)
                except Exception:
                    pass


def text_generator(engine: "ComfyUIEngine") -> Optional[TextGenerator]:
    """A TextGenerate language model on the first server of the pool that passes the render
    preflight for the profile and has the node and its text encoder; None when none does (or the
    profile's encoder cannot write): the formula writes the prompts, and the render's own
    preflight says what the server lacks before anything is queued."""
    if not engine.profile.traits.chat_encoder:
        return None
    infos, _ = engine.server_info()
    plain = [profile_spec(engine.profile)]
    for info in infos.values():
        # The render's preflight first: a server that cannot render the profile (a missing VAE)
        # must not load gigabytes of text encoder for us before the run is refused there.
        if not engine.lacks(info, plain) and not textgen_lacks(info, engine.profile, engine.files):
            return TextGenerator(info, engine.files, engine.timeout, engine.stall_timeout, engine.poll_interval)
    return None
