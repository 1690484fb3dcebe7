"""What every `reverie` command shares: the consoles, one-line errors, the progress bar and the options."""

from __future__ import annotations

import functools
import os
import sqlite3
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from reverie.profiles import DEFAULT_PROFILE
from reverie.types import Event, ReverieError

out = Console()
err = Console(stderr=True)


def say(console: Console, label: str, message: Any, style: str = "yellow") -> None:
    """`label` in colour, then `message` verbatim: text from users, LLMs and engines may hold [brackets]."""
    console.print(Text.assemble((label, style), " ", str(message)), highlight=False, soft_wrap=True)


def path_text(path: str) -> Text:
    """A whole path, and on a terminal also an OSC 8 link to the file (a click opens it where the
    terminal supports links; rich writes no escape codes into a pipe, so CI logs keep the bare path)."""
    from pathlib import Path

    text = Text(path)
    try:
        text.stylize(f"link {Path(path).resolve().as_uri()}")
    except ValueError:  # not a path a file:// URI can name: the text alone
        pass
    return text


def print_paths(rows: List[tuple[str, str]]) -> None:
    """Image paths each on one unbroken line, whatever the terminal width: a path cut by a table
    cell or a tree rail cannot be copied in one go."""
    width = max((len(key) for key, _ in rows), default=0)
    for key, path in rows:
        out.print(Text(f"{key:>{width}}  ").append_text(path_text(path)), soft_wrap=True, highlight=False)


def first_words(text: str, count: int = 8) -> str:
    """The start of a prompt, cut between words: enough to tell the images of a table apart."""
    words = text.split()
    return " ".join(words[:count]) + ("…" if len(words) > count else "")


def print_images(rows: List[dict]) -> None:
    """The images a command made: number, score, seed, size (WxH), render id and the first words of the
    prompt, in a table that fits 80 columns (the prompt gives way), then each whole path on its own
    line. Each row: n, score (text), seed, id, width, height, prompt, path."""
    from rich import box
    from rich.table import Table

    cells = [[str(r["n"]), r["score"], str(r["seed"]), f"{r['width']}x{r['height']}" if r.get("width") and r.get("height") else "-",
              str(r["id"])] for r in rows]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    # The short cells keep their whole width (a cut seed or size is useless); the prompt gives way.
    widths = [max([len(name)] + [len(c[k]) for c in cells]) for k, name in enumerate(("#", "score", "seed", "size", "render"))]
    for name, width in zip(("#", "score", "seed", "size", "render"), widths):
        table.add_column(name, justify="right", no_wrap=True, min_width=width)
    # Set, not left to rich: a table wider than the terminal is shrunk column by column, "#" first.
    room = max(12, out.width - sum(widths) - 3 * (len(widths) + 1))
    table.add_column("prompt", no_wrap=True, overflow="ellipsis", max_width=room)
    for r, row in zip(rows, cells):
        table.add_row(*row, Text(first_words(r.get("prompt") or "")))
    out.print(table, highlight=False)
    print_paths([(str(r["n"]), r["path"]) for r in rows if r.get("path")])


def disk_full(e: BaseException) -> bool:
    """A write failed for lack of space, however the library reported it (safetensors says it
    only in its message), anywhere in the exception's chain."""
    import errno

    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "os error 28" in str(e):
            return True
        if isinstance(e, sqlite3.OperationalError) and "database or disk is full" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


# `reverie --verbose ...` (or REVERIE_DEBUG=1): a traceback on stderr too, not only in the log.
VERBOSE = {"on": bool(os.environ.get("REVERIE_DEBUG"))}


def log_error(e: BaseException, home: Any, what: str, expected: bool = False) -> str:
    """Put e's traceback in the home's log and return what the one-line error adds: where it is."""
    import logging
    import traceback

    from reverie.logs import log_exception

    where = None
    try:
        from reverie.config import resolve_home

        resolved = resolve_home(home)
        if resolved.is_dir():  # an error never creates a home that was not there
            where = log_exception(resolved, e, what, kind="cli", level=logging.INFO if expected else logging.ERROR)
    except Exception:  # a log that cannot be written never hides the error itself
        where = None
    if VERBOSE["on"]:
        err.print(Text("".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()), highlight=False)
    if expected:
        return ""
    if where is None:
        return " (run with --verbose for the traceback)"
    return f" (traceback in {where}; --verbose prints it)"


def friendly(fn: Callable) -> Callable:
    """One clear line for every error a user can cause; the traceback goes to <home>/logs/cli.log
    (and to stderr with --verbose)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        home = kwargs.get("home")
        what = f"reverie {fn.__name__} failed"
        try:
            return fn(*args, **kwargs)
        except ReverieError as e:
            log_error(e, home, what, expected=True)
            say(err, "error:", e, style="bold red")
            raise typer.Exit(2)
        except KeyboardInterrupt:
            from reverie.interrupts import interrupted_code

            err.print("interrupted: everything rendered so far is saved; run the same command to continue")
            raise typer.Exit(interrupted_code())
        except typer.Exit:
            raise
        except Exception as e:  # unexpected: still one line, and the way to see more
            if disk_full(e):
                err.print("[bold red]error:[/] the disk is full: free some space (or pass --home on another disk) and run "
                          "the same command to continue; everything rendered so far is saved", highlight=False, soft_wrap=True)
                raise typer.Exit(2)
            if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)):
                # Another program held the database past the busy timeout; nothing was written.
                err.print("[bold red]error:[/] the database is locked by another program: let it finish, or set "
                          "REVERIE_BUSY_TIMEOUT (seconds) to wait longer", highlight=False, soft_wrap=True)
                raise typer.Exit(2)
            where = log_error(e, home, what)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            say(err, "error:", f"{type(e).__name__}: {first}{where}", style="bold red")
            raise typer.Exit(1)

    return wrapper


class CliProgress:
    """Draws a rich progress bar from Studio events; notices go to stderr once each."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.queue_told = False
        self.progress: Optional[Progress] = None
        self.task = None

    def __call__(self, event: Event) -> None:
        if event.kind == "notice":
            say(err, "reverie:", event.data["message"])
            return
        if event.kind == "loading":  # the first line, within a second, before the heavy imports
            say(err, "reverie:", f"loading the engine for {event.data['profile']}…")
            return
        if event.kind == "queued":  # behind other clients on a shared ComfyUI: said once, then kept up to date
            if not self.queue_told:
                say(err, "reverie:", event.data["message"])
            self.queue_told = True
            if self.progress is not None:
                self.progress.update(self.task, status=escape(f"queued on ComfyUI: {event.data['ahead']} ahead"))
            return
        if self.quiet:
            return
        if event.kind == "run_started":
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=err, transient=False)
            self.progress.start()
            self.task = self.progress.add_task(f"run {event.data['run_id']}", total=event.data["budget"], status="")
        elif self.progress is None:
            return
        elif event.kind == "rendered":
            self.progress.advance(self.task)
        elif event.kind == "expanded":
            self.progress.update(self.task, status=escape(f"round {event.data['round'] + 1}: {event.data['source']} prompt"))
        elif event.kind == "writing":
            self.progress.update(self.task, status=escape(f"writing the prompt… {event.data['tokens']} tokens, "
                                                          f"{event.data['tokens_per_second']:.0f}/s"))
        elif event.kind == "scored":
            self.progress.update(self.task, status=escape(f"best {event.data['best']:.3f} ({event.data['scorer']})"))
        elif event.kind == "judged" and event.data["decision"] == "finish":
            done = self.progress.tasks[0].completed
            self.progress.update(self.task, total=done, status=escape(event.data["reason"]))
        elif event.kind == "finished":
            self.stop()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


# Options several commands share, declared once.
HOME = typer.Option(None, "--home", help="Data folder (default $REVERIE_HOME or the user data dir).")
PROFILE = typer.Option(DEFAULT_PROFILE, "--profile", help="Model profile (`reverie models` lists them).")
ENGINE = typer.Option("auto", "--engine", help="auto, tiny, diffusers, comfyui, or fixed (a fixed-latency stand-in for benchmarks).")
SCORER = typer.Option("auto", "--scorer", help="auto, clip or heuristic.")
LLM_URL = typer.Option(None, "--llm-url", help="OpenAI-compatible server, e.g. http://localhost:11434/v1.")
LLM_MODEL = typer.Option(None, "--llm-model", help="LLM model name (default: the server's first).")
LLM_TIMEOUT = typer.Option(None, "--llm-timeout", min=0.1, metavar="SECONDS",
                           help="Seconds to wait for each LLM answer (default 60, or llm.timeout in reverie.toml).")
LLM_PATH = typer.Option(None, "--llm-path", metavar="FOLDER",
                        help="A local Hugging Face causal LM (e.g. /models/Qwen3-8B) writes the prompts, in this process.")
CONFIG = typer.Option(None, "--config", help="Settings file (default <home>/reverie.toml).")
MODEL_PATH = typer.Option(None, "--model-path", help="Local diffusers folder or .safetensors file.")


# The hand-set controls of make, batch and chat (and the web form): unset means the profile's default.
STEPS = typer.Option(None, "--steps", metavar="N", help="Denoising steps (default: the profile's).")
CFG = typer.Option(None, "--cfg", metavar="SCALE", help="CFG scale as ComfyUI and A1111 write it: 1 is none (default: the profile's).")
NEGATIVE = typer.Option(None, "--negative", metavar="TEXT", help="Negative prompt: what to keep out (needs CFG above 1).")
SAMPLER = typer.Option(None, "--sampler", metavar="NAME", help="euler, euler_ancestral, dpmpp_2m, dpmpp_2m_karras, dpmpp_2m_sde_karras, unipc (flow models: euler).")
EXACT = typer.Option(False, "--exact", help="Render the idea verbatim: no expansion, no critic rewrite.")
HANDOFF_STEPS = typer.Option(0, "--handoff-steps", metavar="K", help="First K steps on the distilled model's base (z-image for z-image-turbo), the rest on the distilled one: more varied seeds (1 is typical).")
STYLE = typer.Option(None, "--style", metavar="NAME", help="A named style from reverie.toml ([styles.NAME] prompt = \"{prompt}, ...\").")


def controls(steps: Optional[int], cfg: Optional[float], negative: Optional[str], sampler: Optional[str],
             exact: bool, style: Optional[str] = None, handoff_steps: int = 0) -> dict:
    """The controls a person set, as Request fields (those left unset are left out)."""
    given = {"steps": steps, "cfg": cfg, "negative": negative, "sampler": sampler, "exact": exact or None,
             "style": style, "handoff_steps": handoff_steps or None}
    return {k: v for k, v in given.items() if v is not None}


def parse_comfy_files(items: List[str]) -> dict:
    files = {}
    for item in items:
        key, sep, name = item.partition("=")
        if not sep or not key.strip() or not name.strip():
            raise ReverieError(f"--comfy-file {item!r} is not KEY=NAME: write e.g. --comfy-file unet=z_image_turbo_bf16.safetensors")
        files[key.strip()] = name.strip()
    return files


# The engine options make, batch, chat and serve share, read by engine_choice() in open_studio().
COMFY_URL = typer.Option(None, "--comfy-url", help="ComfyUI server (repeat for a pool); implies --engine comfyui.")
COMFY_FILE = typer.Option(None, "--comfy-file", help="ComfyUI model file, KEY=NAME (e.g. unet=my_zimage.safetensors).")
DEVICE = typer.Option(None, "--device", help="cuda, cuda:1, mps or cpu (default: the best there is).")
DTYPE = typer.Option(None, "--dtype", help="bfloat16, float16 or float32 (default: bf16 on GPUs, fp32 on CPU).")
BATCH_SIZE = typer.Option(None, "--batch-size", help="Seeds per forward pass (default: from GPU memory).")
CPU_OFFLOAD = typer.Option(False, "--cpu-offload", help="Keep idle model parts in RAM (small GPUs).")


def engine_choice(engine: str, comfy_url: Optional[List[str]], comfy_file: Optional[List[str]], device: Optional[str],
                  dtype: Optional[str], batch_size: Optional[int], cpu_offload: bool) -> tuple[str, dict]:
    """The engine name and its options from the shared engine flags: ComfyUI flags imply ComfyUI;
    device, dtype, batch size and offload are for the in-process engines."""
    options: dict[str, Any] = {}
    if comfy_url or comfy_file:
        if engine not in ("auto", "comfyui"):
            raise ReverieError(f"--comfy-url and --comfy-file are for the ComfyUI engine: drop them or pass --engine comfyui, not {engine}")
        engine = "comfyui"
        comfy_url = [with_scheme(url) for url in comfy_url or []]
        options = {"servers": comfy_url or None, "files": parse_comfy_files(comfy_file or [])}
    if engine != "comfyui":  # in-process engines only
        options.update({k: v for k, v in {"device": device, "dtype": dtype, "batch_size": batch_size,
                                          "cpu_offload": cpu_offload or None}.items() if v is not None})
    return engine, options


def with_scheme(url: str) -> str:
    """A ComfyUI address as people write it (127.0.0.1:8188) gets http:// and says so."""
    url = url.strip()
    if "://" in url:
        return url
    say(err, "reverie:", f"--comfy-url {url} has no scheme: using http://{url}")
    return "http://" + url


# Device nodes and driver files that say a GPU may be here; only then is torch asked (seconds).
GPU_SIGNS = ("/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg")


def cuda_missing(device: str) -> Optional[str]:
    """Why `device` (cuda, cuda:N) cannot run here, or None. The cheap signs come first, so a CPU
    machine answers without importing torch; torch is asked only where a driver is present."""
    from pathlib import Path

    for var in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        value = os.environ.get(var)
        if value is not None and value.strip() in ("", "-1"):
            return f"{var}={value.strip()!r} hides every GPU"
    if not any(Path(p).exists() for p in GPU_SIGNS):
        return "no NVIDIA or ROCm driver on this machine"
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":", 1)[1]) if ":" in device and device.split(":", 1)[1].isdigit() else 0
    if count == 0:
        return "torch sees no GPU (a CPU-only torch, or a driver that does not answer)"
    if index >= count:
        return f"this machine has {count} GPU(s): cuda:0 to cuda:{count - 1}"
    return None


REACH_S = 1.0  # a ComfyUI on this machine or the LAN takes a connection in milliseconds


def check_reachable(urls: List[str]) -> None:
    """At least one ComfyUI server takes a connection, or one line now (not a failed run minutes
    later). Every server is tried at once, so a pool of unreachable hosts costs one wait, not one each."""
    import socket
    import threading
    from urllib.parse import urlsplit

    why: dict[str, str] = {}
    answered = threading.Event()

    def knock(url: str) -> None:
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            with socket.create_connection((parts.hostname or "", port), timeout=REACH_S):
                answered.set()
        except socket.timeout:
            why[url] = f"no answer within {REACH_S:.0f} s"
        except (OSError, ValueError) as e:
            why[url] = getattr(e, "strerror", None) or str(e) or type(e).__name__

    knockers = [threading.Thread(target=knock, args=(url,), daemon=True) for url in urls]
    for t in knockers:
        t.start()
    for t in knockers:
        t.join(REACH_S + 0.5)
        if answered.is_set():
            return
    if answered.is_set():
        return
    raise ReverieError("no ComfyUI server answers (" + "; ".join(f"{u}: {why.get(u, 'no answer')}" for u in urls)
                       + "): start ComfyUI, or fix --comfy-url")


def preflight(engine: str, options: dict, profile: str, model_path: Optional[str], weights: bool) -> None:
    """What would fail only after the engine loads (and leave a failed run behind), said in one line now:
    a device this machine lacks, a model path that is not there, and with `weights` (serve, which has
    no request to check first; make checks its request, then the weights) weights never pulled."""
    from pathlib import Path

    from reverie.profiles import get_profile

    device = options.get("device")
    missing_gpu = cuda_missing(device) if device and device.split(":")[0] == "cuda" else None
    if missing_gpu:
        raise ReverieError(f"device {device} is not available here ({missing_gpu}): use --device cpu, or leave "
                           "--device out")
    if engine == "comfyui" and options.get("servers"):
        check_reachable(options["servers"])
    if engine in ("comfyui", "fixed", "tiny"):
        return
    if model_path and not Path(model_path).expanduser().exists():
        raise ReverieError(f"model path {model_path} does not exist: point --model-path at a diffusers folder or a "
                           ".safetensors file")
    from reverie.orchestrator.parts import TINY_PROFILE

    chosen = get_profile(profile)
    # As Studio chooses for --engine auto: the tiny engine stands in only for Z-Image Turbo without weights.
    if weights and (engine == "diffusers" or model_path or chosen.name != TINY_PROFILE):
        from reverie.render.weights import resolve_weights

        resolve_weights(chosen, model_path)


def open_studio(*, engine: str, comfy_url: Optional[List[str]] = None, comfy_file: Optional[List[str]] = None,
                device: Optional[str] = None, dtype: Optional[str] = None, batch_size: Optional[int] = None,
                cpu_offload: bool = False, check_weights: bool = False, **studio_options: Any):
    """The Studio of make, batch, chat and serve, from the options they share: built in one place so
    that an option added for one command reaches them all. Engine flags are checked before the
    orchestrator is imported."""
    engine, engine_options = engine_choice(engine, comfy_url, comfy_file, device, dtype, batch_size, cpu_offload)
    if studio_options.get("ray") and engine == "comfyui":  # an option clash is said before any server is asked
        raise ReverieError("ComfyUI servers are workers already: pass --comfy-url once per server instead of --ray")
    preflight(engine, engine_options, studio_options.get("profile") or DEFAULT_PROFILE, studio_options.get("model_path"),
              weights=check_weights)
    from reverie.orchestrator.studio import Studio

    return Studio(engine=engine, engine_options=engine_options, **studio_options)
