"""A scripted OpenAI-compatible server on 127.0.0.1 for tests: real HTTP, real `openai` client.

    with ScriptedLLM([Reply(json_content({...})), Reply(status=500)]) as llm:
        ... llm.url ...   # http://127.0.0.1:PORT/v1
        llm.chat_requests  # the JSON bodies it received

Replies are consumed in order; when the script runs out, `responder(body) -> Reply` answers, and
without one the server answers 500. A reply can delay, fail with a status, or send raw bytes.
`reject_response_format=True` answers 400 to any request carrying response_format, as servers
without structured output do.
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


class ScriptedLLM:
    def __init__(self, replies: Optional[list[Reply]] = None, responder: Optional[Callable[[dict], Reply]] = None,
                 models: tuple[str, ...] = ("scripted-model",), reject_response_format: bool = False):
        self.replies = list(replies or [])
        self.responder = responder
        self.models = models
        self.reject_response_format = reject_response_format
        self.requests: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
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
        self._stopping.set()  # ends any scripted delay at once
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "ScriptedLLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_reply(self, body: dict) -> Reply:
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

            def _send(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def _error(self, status: int, message: str) -> None:
                self._send(status, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode())

            def do_GET(self) -> None:
                scripted.requests.append((self.path, {}))
                if self.path.rstrip("/").endswith("/models"):
                    data = [{"id": m, "object": "model", "created": 0, "owned_by": "tests"} for m in scripted.models]
                    self._send(200, json.dumps({"object": "list", "data": data}).encode())
                else:
                    self._error(404, f"no route {self.path}")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                scripted.requests.append((self.path, body))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._error(404, f"no route {self.path}")
                if scripted.reject_response_format and "response_format" in body:
                    return self._error(400, "response_format is not supported by this server")
                reply = scripted._next_reply(body)
                if reply.delay and scripted._stopping.wait(reply.delay):
                    return
                if reply.raw is not None:
                    return self._send(reply.status, reply.raw)
                if reply.status != 200:
                    return self._error(reply.status, reply.content or "scripted failure")
                self._send(200, json.dumps(completion(reply.content, body.get("model", ""))).encode())

        return Handler
