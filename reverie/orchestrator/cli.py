"""The `reverie` command line: a thin layer over Studio."""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import sys
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from reverie.types import Event, ReverieError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="reverie: terse idea in, excellent images out, every one explained.")
out = Console()
err = Console(stderr=True)


def say(console: Console, label: str, message: Any, style: str = "yellow") -> None:
    """`label` in colour, then `message` verbatim: text from users, LLMs and engines may hold [brackets]."""
    console.print(Text.assemble((label, style), " ", str(message)), highlight=False, soft_wrap=True)


def print_paths(rows: List[tuple[str, str]]) -> None:
    """Image paths each on one unbroken line, whatever the terminal width: a path cut by a table
    cell or a tree rail cannot be copied in one go."""
    width = max((len(key) for key, _ in rows), default=0)
    for key, path in rows:
        out.print(Text(f"{key:>{width}}  {path}"), soft_wrap=True, highlight=False)


def friendly(fn: Callable) -> Callable:
    """One clear line for every error a user can cause; a traceback only with REVERIE_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except ReverieError as e:
            say(err, "error:", e, style="bold red")
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err.print("interrupted: everything rendered so far is saved; run the same command to continue")
            raise typer.Exit(130)
        except typer.Exit:
            raise
        except Exception as e:  # unexpected: still one line, and the way to see more
            if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)):
                # Another program held the database past the busy timeout; nothing was written.
                err.print("[bold red]error:[/] the database is locked by another program: let it finish, or set "
                          "REVERIE_BUSY_TIMEOUT (seconds) to wait longer", highlight=False, soft_wrap=True)
                raise typer.Exit(2)
            if os.environ.get("REVERIE_DEBUG"):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            say(err, "error:", f"{type(e).__name__}: {first} (set REVERIE_DEBUG=1 for the traceback)", style="bold red")
            raise typer.Exit(1)

    return wrapper


class CliProgress:
    """Draws a rich progress bar from Studio events; notices go to stderr once each."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress: Optional[Progress] = None
        self.task = None

    def __call__(self, event: Event) -> None:
        if event.kind == "notice":
            say(err, "reverie:", event.data["message"])
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
PROFILE = typer.Option("z-image-turbo", "--profile", help="Model profile (`reverie models` lists them).")
ENGINE = typer.Option("auto", "--engine", help="auto, tiny, diffusers, comfyui, or fixed (a fixed-latency stand-in for benchmarks).")
SCORER = typer.Option("auto", "--scorer", help="auto, clip or heuristic.")
LLM_URL = typer.Option(None, "--llm-url", help="OpenAI-compatible server, e.g. http://localhost:11434/v1.")
LLM_MODEL = typer.Option(None, "--llm-model", help="LLM model name (default: the server's first).")
LLM_TIMEOUT = typer.Option(None, "--llm-timeout", min=0.1, metavar="SECONDS",
                           help="Seconds to wait for each LLM answer (default 60, or llm.timeout in reverie.toml).")
CONFIG = typer.Option(None, "--config", help="Settings file (default <home>/reverie.toml).")
MODEL_PATH = typer.Option(None, "--model-path", help="Local diffusers folder or .safetensors file.")


def parse_comfy_files(items: List[str]) -> dict:
    files = {}
    for item in items:
        key, sep, name = item.partition("=")
        if not sep or not key.strip() or not name.strip():
            raise ReverieError(f"--comfy-file {item!r} is not KEY=NAME: write e.g. --comfy-file unet=z_image_turbo_bf16.safetensors")
        files[key.strip()] = name.strip()
    return files


# The engine options `make` and `batch` share, read by engine_choice().
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
        options = {"servers": comfy_url or None, "files": parse_comfy_files(comfy_file or [])}
    if engine != "comfyui":  # in-process engines only
        options.update({k: v for k, v in {"device": device, "dtype": dtype, "batch_size": batch_size,
                                          "cpu_offload": cpu_offload or None}.items() if v is not None})
    return engine, options


@app.command()
@friendly
def make(
    idea: str = typer.Argument(..., help="What to make, in a few words."),
    n: int = typer.Option(4, "--n", help="Images per round."),
    rounds: int = typer.Option(2, "--rounds", help="Most rounds to run."),
    target: Optional[float] = typer.Option(None, "--target", help="Stop when the best composite score reaches this."),
    aspect: str = typer.Option("1:1", "--aspect", help="Aspect ratio W:H, e.g. 2:3 or 16:9."),
    megapixels: float = typer.Option(1.0, "--megapixels", help="Image size in megapixels (0.01-4)."),
    profile: str = PROFILE,
    engine: str = ENGINE,
    scorer: str = SCORER,
    seed: Optional[int] = typer.Option(None, "--seed", help="First seed (random if not given)."),
    home: Optional[str] = HOME,
    model_path: Optional[str] = MODEL_PATH,
    llm_url: Optional[str] = LLM_URL,
    llm_model: Optional[str] = LLM_MODEL,
    llm_timeout: Optional[float] = LLM_TIMEOUT,
    config: Optional[str] = CONFIG,
    ref: Optional[str] = typer.Option(None, "--ref", help="A reference image whose structure or look to keep."),
    control: str = typer.Option("auto", "--control", help="How to use --ref: auto, canny, depth, pose or img2img."),
    comfy_url: Optional[List[str]] = COMFY_URL,
    comfy_file: Optional[List[str]] = COMFY_FILE,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    batch_size: Optional[int] = BATCH_SIZE,
    cpu_offload: bool = CPU_OFFLOAD,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
):
    """Expand an idea, render, score and loop; print the best images."""
    from reverie.orchestrator.studio import Studio

    progress = CliProgress(quiet=as_json)
    engine, engine_options = engine_choice(engine, comfy_url, comfy_file, device, dtype, batch_size, cpu_offload)
    if control != "auto" and not ref:
        raise ReverieError(f"--control {control} needs a reference image: add --ref PATH")
    studio = Studio(home=home, engine=engine, profile=profile, scorer=scorer, model_path=model_path, llm_url=llm_url,
                    llm_model=llm_model, llm_timeout=llm_timeout, config=config, engine_options=engine_options)
    references = [{"path": ref, "control": control}] if ref else []
    try:
        result = studio.make(idea, n=n, rounds=rounds, target=target, aspect=aspect, megapixels=megapixels,
                             seed=seed, progress=progress, references=references)
    finally:
        progress.stop()
        studio.close()
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    # A title line, not the table's title: the narrow table would wrap it into a column.
    out.print(Text(f"best of run {result.run_id} ({len(result.renders)} renders; {result.stop_reason})", style="bold"),
              highlight=False)
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("seed", justify="right")
    table.add_column("render", justify="right")
    for i, r in enumerate(result.best, 1):
        table.add_row(str(i), f"{r.scores.composite:.3f}" if r.scores else "-", str(r.seed), str(r.id))
    out.print(table)
    print_paths([(str(i), r.path) for i, r in enumerate(result.best, 1)])
    out.print(f"run id: {result.run_id}   (reverie show {result.run_id})", highlight=False)


@app.command()
@friendly
def runs(
    home: Optional[str] = typer.Option(None, "--home"),
    limit: int = typer.Option(30, "--limit"),
    as_json: bool = typer.Option(False, "--json"),
):
    """List runs, newest first."""
    from reverie.config import resolve_home
    from reverie.store.db import Store

    store = Store(resolve_home(home))
    rows = store.list_runs(limit)
    if as_json:
        print(json.dumps([{k: r[k] for k in ("id", "idea", "profile", "engine", "status", "renders", "best", "created")} for r in rows]))
        return
    table = Table()
    for col in ("run", "status", "renders", "best", "profile", "idea"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], r["status"], str(r["renders"]), f"{r['best']:.3f}" if r["best"] is not None else "-",
                      r["profile"], Text(r["idea"][:60]))
    out.print(table)


@app.command()
@friendly
def show(
    run_id: str = typer.Argument(..., help="A run id (a unique prefix is enough)."),
    home: Optional[str] = typer.Option(None, "--home"),
    as_json: bool = typer.Option(False, "--json"),
):
    """Show the tree of one run: idea, prompts, renders, scores."""
    from reverie.config import resolve_home
    from reverie.store.db import Store

    tree = Store(resolve_home(home)).run_tree(run_id)
    if as_json:
        print(json.dumps(tree, ensure_ascii=False, default=str))
        return
    run = tree["run"]
    root = Tree(f"[bold]{run['id']}[/]  {run['status']}  [dim]{escape(run['stop_reason'] or '')}[/]\nidea: {escape(run['idea'])}")

    def add(node: Tree, p: dict) -> None:
        label = escape(f"prompt {p['id']} [{p['source']}] round {p['round'] + 1}" + (f" — {p['reason']}" if p["reason"] else ""))
        # The whole prompt: it is what made the images, and a cut one cannot be copied or compared.
        child = node.add(f"{label}\n[dim]{escape(p['text'])}[/]")
        for r in p["renders"]:
            s = r["scores"] or {}
            score = f"{s.get('composite', 0):.3f}" if s else r["status"]
            # A prompt kept for another round gets new seeds; the render's own round says which.
            # The path goes in the list below the tree, where nothing wraps it; an error stays here.
            child.add(Text(f"render {r['id']} round {r['round'] + 1} seed {r['seed']} score {score}"
                           + (f"\n{r['error']}" if r["error"] and not r["path"] else "")))
            if r["path"]:
                paths.append((f"render {r['id']}", r["path"]))
        for c in p["children"]:
            add(child, c)

    paths: List[tuple[str, str]] = []
    for p in tree["prompts"]:
        add(root, p)
    out.print(root, highlight=False)
    if paths:
        out.print("[bold]images[/]")
        print_paths(paths)


# Each area registers its own commands on `app`; imported here, after `app` exists.
from reverie.orchestrator import cli_agents, cli_batch, cli_lineage, cli_models, cli_scoring  # noqa: E402,F401


def readable(command):
    """Metavars a person reads (`--n N`, `IDEA`, bare flags) instead of typer's `<int>` and `{idea}`."""
    for param in getattr(command, "params", []):
        # Duck-typed: recent typer vendors its own click, whose classes are not click's.
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
        elif param.metavar is None:
            param.metavar = (param.name or "value").upper()
    for sub_command in getattr(command, "commands", {}).values():
        readable(sub_command)
    return command


def version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"reverie {version('reverie')}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """reverie: terse idea in, excellent images out, every one explained."""


def main() -> None:
    """Run the CLI; a mistyped command or option is one `error:` line too, not a usage box."""
    try:  # recent typer vendors its own click
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as cx

    try:
        code = readable(typer.main.get_command(app))(standalone_mode=False)
    except cx.NoArgsIsHelpError as e:
        # `reverie` alone (or a group alone): the help is what the user wants to see.
        print(e.ctx.get_help() if e.ctx else "")
        sys.exit(0)
    except cx.UsageError as e:
        where = e.ctx.command_path if e.ctx else "reverie"
        say(err, "error:", f"{e.format_message()} (see `{where} --help`)", style="bold red")
        sys.exit(2)
    except typer.Abort:
        say(err, "interrupted:", "everything rendered so far is saved; run the same command to continue")
        sys.exit(130)
    except cx.ClickException as e:
        say(err, "error:", e.format_message(), style="bold red")
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
