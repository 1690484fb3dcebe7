"""A scripted OpenAI-compatible server on 127.0.0.1 for tests: real HTTP, real `openai` client.

    with ScriptedLLM([Reply(json_content({...})), Reply(status=500)]) as llm:
        ... llm.url ...   # http://127.0.0.1:PORT/v1
        llm.chat_requests  # the JSON bodies it received

Replies are consumed in order; when the script runs out, `responder(body) -> Reply` answers, and
without one the server answers 500. A reply can delay, fail with a status, or send raw bytes.
`reject_response_format=True` answers 400 to any request carrying response_format, as servers
without structured output do. `unknown_model_status=404` (or 400) refuses any chat request for a
model the server does not list, as Ollama and vLLM do. `html=True` answers every route with a 200
HTML page, as a web UI at a mistyped URL does. `models_status` makes /models fail with that status.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional


@dataclass
class Reply:
    content: str = ""
    status: int = 200
    delay: float = 0.0
    raw: Optional[bytes] = None  # sent as the body as is (garbage, truncated JSON, ...)
    content_type: str = "application/json"


def json_content(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


def completion(content: str, model: str) -> dict:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 42, "completion_tokens": max(1, len(content.split())),
                  "total_tokens": 42 + max(1, len(content.split()))},
    }


HTML = b"<!doctype html><html><head><title>Open WebUI</title></head><body><div id=app></div></body></html>"


class ScriptedLLM:
    def __init__(self, replies: Optional[list[Reply]] = None, responder: Optional[Callable[[dict], Reply]] = None,
                 models: tuple[str, ...] = ("scripted-model",), reject_response_format: bool = False,
                 unknown_model_status: int = 0, html: bool = False, models_status: int = 200):
        self.replies = list(replies or [])
        self.responder = responder
        self.models = models
        self.reject_response_format = reject_response_format
        self.unknown_model_status = unknown_model_status
        self.html = html
        self.models_status = models_status
        self.requests: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="scripted-llm", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def chat_requests(self) -> list[dict]:
        return [body for path, body in self.requests if path.endswith("/chat/completions")]

    def start(self) -> "ScriptedLLM":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # ends any scripted delay at once
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "ScriptedLLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def next_reply(self, body: dict) -> Reply:
        with self._lock:
            if self.replies:
                return self.replies.pop(0)
        if self.responder is not None:
            return self.responder(body)
        return Reply(status=500, content="no scripted reply left")

    def _handler(self):
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def _error(self, status: int, message: str) -> None:
                self._send(status, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode())

            def do_GET(self) -> None:
                scripted.requests.append((self.path, {}))
                if scripted.html:
                    return self._send(200, HTML, "text/html; charset=utf-8")
                if self.path.rstrip("/").endswith("/models") and scripted.models_status != 200:
                    self._error(scripted.models_status, "listing models is not allowed here")
                elif self.path.rstrip("/").endswith("/models"):
                    data = [{"id": m, "object": "model", "created": 0, "owned_by": "tests"} for m in scripted.models]
                    self._send(200, json.dumps({"object": "list", "data": data}).encode())
                else:
                    self._error(404, f"no route {self.path}")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                scripted.requests.append((self.path, body))
                if scripted.html:
                    return self._send(200, HTML, "text/html; charset=utf-8")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._error(404, f"no route {self.path}")
                if scripted.reject_response_format and "response_format" in body:
                    return self._error(400, "response_format is not supported by this server")
                if scripted.unknown_model_status and body.get("model") not in scripted.models:
                    return self._error(scripted.unknown_model_status,
                                       f"The model `{body.get('model')}` does not exist or you do not have access to it.")
                reply = scripted.next_reply(body)
                if reply.delay and scripted.stopping.wait(reply.delay):
                    return
                if reply.raw is not None:
                    return self._send(reply.status, reply.raw, reply.content_type)
                if reply.status != 200:
                    return self._error(reply.status, reply.content or "scripted failure")
                self._send(200, json.dumps(completion(reply.content, body.get("model", ""))).encode())

        return Handler
