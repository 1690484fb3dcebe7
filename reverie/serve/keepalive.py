"""`reverie serve --keep-alive SECONDS`: free the model's memory after that long without a request,
as Ollama does; the next request loads it again."""

from __future__ import annotations

import threading
import time

from reverie.logs import get
from reverie.serve.service import ServeService

log = get("serve")


class KeepAlive:
    def __init__(self, service: ServeService, seconds: float, poll: float = 1.0):
        self.service, self.seconds, self.poll = service, float(seconds), poll
        self.stop = threading.Event()
        self.last_busy = time.monotonic()
        self.freed = 0  # how many times the model was freed (status shows it)
        self.thread = threading.Thread(target=self.watch, name="reverie-keep-alive", daemon=True)

    def start(self) -> "KeepAlive":
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()

    def busy(self) -> bool:
        return any(not j.done.is_set() for j in list(self.service.jobs.values()))

    def watch(self) -> None:
        while not self.stop.wait(self.poll):
            if self.busy():
                self.last_busy = time.monotonic()
            elif time.monotonic() - self.last_busy >= self.seconds and self.free():
                log.info("freed the model after %.0f s without a request", self.seconds)

    def free(self) -> bool:
        """Unload the default profile's weights between renders; False when nothing was loaded."""
        from reverie.profiles import get_profile

        studio = self.service.studio
        engine = studio.engine_for(get_profile(studio.profile_name), lambda e: None)
        if getattr(engine, "pipe", None) is None:
            return False
        studio.worker.call(engine, engine.close)
        self.freed += 1
        return True
