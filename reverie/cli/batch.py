"""CLI commands for batch and chat (registered on the app in reverie.cli)."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Column
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from reverie.cli.common import (BATCH_SIZE, CFG, COMFY_FILE, COMFY_URL, CONFIG, CPU_OFFLOAD, DEVICE, DTYPE, ENGINE, EXACT, HANDOFF_STEPS, HOME,
                                LLM_MODEL, LLM_PATH, LLM_TIMEOUT, LLM_URL, MODEL_PATH, NEGATIVE, PROFILE, SAMPLER, SCORER, STEPS, STYLE,
                                CliProgress, controls, err, friendly, open_studio, out, print_images, print_paths, say)
from reverie.types import Event, ReverieError


class BatchProgressView(CliProgress):
    """One rich view for a batch: an overall bar with rate, ETA and best score, one bar per idea."""

    def __init__(self, quiet: bool = False):
        super().__init__(quiet)
        self.overall = None
        self.rows: dict[int, int] = {}

    def __call__(self, event: Event) -> None:
        d = event.data
        if event.kind in ("notice", "loading"):  # the same lines as make's
            super().__call__(event)
            return
        if self.quiet:
            return
        if event.kind == "batch_started":
            # Fixed widths that add up to 80 columns, so the bars never collapse to a sliver.
            self.progress = Progress(TextColumn("{task.description}", table_column=Column(width=24, no_wrap=True)),
                                     BarColumn(bar_width=10), MofNCompleteColumn(table_column=Column(width=9)),
                                     TextColumn("{task.fields[info]}", table_column=Column(width=26, no_wrap=True)),
                                     TimeElapsedColumn(), console=err)
            self.progress.start()
            resumed = "resumed, " if d["resumed"] else ""
            self.overall = self.progress.add_task(f"[bold]batch {d['batch_id'][:12]}[/]", total=d["total"], completed=d["done"],
                                                  info=f"{resumed}{len(d['items'])} ideas")
            for it in d["items"]:
                self.rows[it["index"]] = self.progress.add_task(escape(_short(f"  {it['index'] + 1}. {it['idea']}", 24)), total=it["budget"],
                                                                completed=it["done"], info=_best(it["best"]))
        elif self.progress is None:
            return
        elif event.kind == "batch_progress":
            eta = d["eta_seconds"]
            eta_text = f"ETA {_duration(eta)}" if eta is not None else ""
            self.progress.update(self.overall, completed=d["done"],
                                 info=f"{d['images_per_minute']:.0f}/min {eta_text} {_best(d['best'])}")
            for it in d["items"]:
                self.progress.update(self.rows[it["index"]], completed=it["done"], info=_best(it["best"]))
        elif event.kind == "batch_finished":
            self.stop()


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _best(value: Optional[float]) -> str:
    return f"best {value:.3f}" if value is not None else "best -"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


@friendly
def batch(
    file: str = typer.Argument(..., help="Text file, one idea per line (# comments), or JSONL with per-idea overrides."),
    per_prompt: Optional[int] = typer.Option(None, "--per-prompt", help="Renders per idea (default 8; unlimited with --hours)."),
    keep: int = typer.Option(4, "--keep", help="Best images kept per idea (near-duplicates dropped)."),
    hours: Optional[float] = typer.Option(None, "--hours", help="Time budget; renders are spread fairly across ideas."),
    n: Optional[int] = typer.Option(None, "--n", help="Images per round for each idea (default 4)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="At most this many rounds per idea (default: as the budget needs)."),
    target: Optional[float] = typer.Option(None, "--target", help="Stop an idea once its best composite score (0..1) reaches this."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Try again the ideas set aside for crashing the process twice."),
    policy: str = typer.Option("explore", "--policy", help="After a round: explore (a fresh reading of the idea) or revise (new seeds, the critic's rewrites)."),
    profile: str = PROFILE,
    engine: str = ENGINE,
    aspect: str = typer.Option("1:1", "--aspect", help="Aspect ratio W:H for every idea (JSONL may override)."),
    megapixels: float = typer.Option(1.0, "--megapixels", help="Image size in megapixels (JSONL may override)."),
    steps: Optional[int] = STEPS,
    cfg: Optional[float] = CFG,
    negative: Optional[str] = NEGATIVE,
    sampler: Optional[str] = SAMPLER,
    exact: bool = EXACT,
    handoff_steps: int = HANDOFF_STEPS,
    style: Optional[str] = STYLE,
    home: Optional[str] = HOME,
    model_path: Optional[str] = MODEL_PATH,
    scorer: str = SCORER,
    llm_url: Optional[str] = LLM_URL,
    llm_model: Optional[str] = LLM_MODEL,
    llm_timeout: Optional[float] = LLM_TIMEOUT,
    llm_path: Optional[str] = LLM_PATH,
    config: Optional[str] = CONFIG,
    comfy_url: Optional[List[str]] = COMFY_URL,
    comfy_file: Optional[List[str]] = COMFY_FILE,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    batch_size: Optional[int] = BATCH_SIZE,
    cpu_offload: bool = CPU_OFFLOAD,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a summary."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Render on Ray actors: local, auto (this machine's cluster) or ray://HOST:10001; needs pip install 'reverie[ray]'."),
    workers: Optional[int] = typer.Option(None, "--workers", metavar="N", help="Ray engine workers (default: one per GPU; 1 on a CPU-only cluster)."),
    local: bool = typer.Option(False, "--local", help="Run in this process even when `reverie serve` runs for this home."),
):
    """Run a file of ideas overnight: best-of-N per idea, resumable, with an HTML contact sheet."""
    view = BatchProgressView(quiet=as_json)
    # Studio.batch's options, built once: the warm server gets them as they are, so a new one travels.
    options = dict(per_prompt=per_prompt, keep=keep, hours=hours, aspect=aspect, megapixels=megapixels, n=n,
                   rounds=rounds, target=target, policy=policy, retry_failed=retry_failed,
                   controls=controls(steps, cfg, negative, sampler, exact, style, handoff_steps))
    server = None if local else batch_server(file, home=home, own={
        "--engine": engine != "auto", "--scorer": scorer != "auto", "--model-path": model_path, "--llm-url": llm_url,
        "--llm-model": llm_model, "--llm-timeout": llm_timeout, "--llm-path": llm_path, "--config": config,
        "--comfy-url": comfy_url, "--comfy-file": comfy_file, "--device": device, "--dtype": dtype,
        "--batch-size": batch_size, "--cpu-offload": cpu_offload, "--ray": ray, "--workers": workers})
    if server is not None:
        made, scorers = batch_remote(server, view, as_json, file=file, options={**options, "profile": profile}, home=home)
        return print_batch(made, scorers, as_json)
    studio = open_studio(home=home, engine=engine, profile=profile, model_path=model_path, scorer=scorer, llm_url=llm_url,
                         llm_model=llm_model, llm_timeout=llm_timeout, llm_path=llm_path, config=config,
                         comfy_url=comfy_url, comfy_file=comfy_file, device=device, dtype=dtype, batch_size=batch_size,
                         cpu_offload=cpu_offload, ray=ray, workers=workers)
    try:
        result = studio.batch(file, progress=view, **options)
    finally:
        view.stop()
        studio.close()
    print_batch(result.to_dict(), [[r.scores.scorer if r.scores else None for r in item.kept] for item in result.items],
                as_json)


def batch_server(file: str, *, home: Optional[str], own: dict):
    """The warm server to run this batch, or None: a file that names reference images (files of
    this machine the server must not be asked to open) runs here. The file is read here either way,
    so a bad line is the same one error."""
    from reverie.cli.remote import handing_server
    from reverie.orchestrator.batch import read_batch_file

    if handing_server(home, False, {}) is None:
        return None
    _, items = read_batch_file(file)
    return handing_server(home, False, {**own, "a reference image in the file": any(i.references for i in items)})


def batch_remote(server, view: BatchProgressView, as_json: bool, *, file: str, options: dict,
                 home: Optional[str]) -> tuple[dict, list]:
    """The batch on the warm server: the file's text travels, the batch runs there while this command
    follows it, and Ctrl-C here interrupts it there (saved; the same command continues it)."""
    from pathlib import Path

    from reverie.cli.remote import UnexpectedServerError, home_of, remote_batch
    from reverie.orchestrator.batch import read_batch_file

    text, _ = read_batch_file(file)
    if not as_json:
        say(err, "reverie:", f"handing the batch to the server for this home at {server.url} (--local runs it here)")
    body = {"text": text, "source": str(Path(file).expanduser()), "options": options, "home": home_of(home)}
    try:
        end = remote_batch(server, body, view)
    except UnexpectedServerError as e:
        say(err, "error:", str(e), style="bold red")
        raise typer.Exit(1)
    finally:
        view.stop()
    return end["result"], end["scorers"]


def print_batch(made: dict, scorers: list, as_json: bool) -> None:
    """batch's answer and exit code, the same whether this process or the warm server ran it."""
    items = made["items"]
    failed = [i for i in items if i["status"] == "failed"]
    # Some ideas failing is a finished night (exit 0, the failures named); all of them is an error.
    all_failed = len(failed) == len(items)
    if as_json:
        print(json.dumps(made, ensure_ascii=False))
    else:
        for item, item_scorers in zip(items, scorers):
            print_idea(item, item_scorers)
        out.print(f"batch {made['batch_id']}: {made['stop_reason']}", markup=False, highlight=False)
        out.print(f"report: {made['report']}", markup=False, highlight=False, soft_wrap=True)
    reasons = {i["error"] for i in failed}
    if all_failed and len(reasons) == 1:
        # Every idea failed for one reason (a bad engine option, an engine that cannot start): that reason alone.
        say(err, "error:", reasons.pop(), style="bold red")
    elif failed:
        # BatchResult.failure_line's words, from the result as either way gives it
        line = f"{len(failed)} of {len(items)} ideas failed: " + "; ".join(
            f"{i['index'] + 1}. {i['idea'][:40]} ({i['error']})" for i in failed)
        tail = "fix them and run the same command: only the failed ideas are tried again"
        say(err, "error:" if all_failed else "warning:", f"{line}; {tail}", style="bold red" if all_failed else "yellow")
    if all_failed:
        raise typer.Exit(2)


def print_idea(item: dict, scorers: list) -> None:
    """One idea of a batch's summary: a line that fits 80 columns, then each kept image, best
    first, with its score and whole path on one unbroken line (make's path lines)."""
    scorer = next((s for k, s in zip(item["kept"], scorers) if k["score"] is not None and s), None)
    head = f"{item['index'] + 1}. "
    tail = f"  kept {len(item['kept'])} of {item['rendered']}" + (f", scored by {scorer}" if scorer else "")
    idea = _short(item["idea"], max(20, min(out.width, 80) - len(head) - len(tail)))
    out.print(head + idea + tail, markup=False, highlight=False, soft_wrap=True)
    if item["status"] == "failed":
        out.print(f"   failed: {item['error']}", markup=False, highlight=False, soft_wrap=True)
    keys = [f"   {item['index'] + 1}.{k + 1}  " + (f"{kept['score']:.3f}" if kept["score"] is not None else "    -")
            + ("  near-duplicate" if kept.get("near_duplicate") else "") for k, kept in enumerate(item["kept"])]
    width = max(map(len, keys), default=0)  # left-aligned, so the paths start in one column
    print_paths([(f"{key:<{width}}", kept["path"]) for key, kept in zip(keys, item["kept"])])


@friendly
def chat(
    session: Optional[str] = typer.Option(None, "--session", help="Session name; an existing one is resumed."),
    n: int = typer.Option(4, "--n", help="Images per round."),
    rounds: int = typer.Option(1, "--rounds", help="Rounds per turn."),
    aspect: str = typer.Option("1:1", "--aspect", help="Aspect ratio of the first turn."),
    megapixels: float = typer.Option(1.0, "--megapixels", help="Image size in megapixels."),
    steps: Optional[int] = STEPS,
    cfg: Optional[float] = CFG,
    negative: Optional[str] = NEGATIVE,
    sampler: Optional[str] = SAMPLER,
    exact: bool = EXACT,
    handoff_steps: int = HANDOFF_STEPS,
    style: Optional[str] = STYLE,
    profile: str = PROFILE,
    engine: str = ENGINE,
    home: Optional[str] = HOME,
    model_path: Optional[str] = MODEL_PATH,
    scorer: str = SCORER,
    llm_url: Optional[str] = LLM_URL,
    llm_model: Optional[str] = LLM_MODEL,
    llm_timeout: Optional[float] = LLM_TIMEOUT,
    llm_path: Optional[str] = LLM_PATH,
    config: Optional[str] = CONFIG,
    comfy_url: Optional[List[str]] = COMFY_URL,
    comfy_file: Optional[List[str]] = COMFY_FILE,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    batch_size: Optional[int] = BATCH_SIZE,
    cpu_offload: bool = CPU_OFFLOAD,
    local: bool = typer.Option(False, "--local", help="Run in this process even when `reverie serve` runs for this home."),
):
    """A conversation: describe an image, then say what to change ("make it night", "more like the second one")."""
    from reverie.cli.remote import handing_server

    interactive = sys.stdin.isatty()
    # Studio.chat's options for every turn: the warm server gets them as they are, so a new one travels.
    options = dict(n=n, rounds=rounds, aspect=aspect, megapixels=megapixels,
                   **controls(steps, cfg, negative, sampler, exact, style, handoff_steps))
    server = handing_server(home, local, {
        "--engine": engine != "auto", "--scorer": scorer != "auto", "--model-path": model_path, "--llm-url": llm_url,
        "--llm-model": llm_model, "--llm-timeout": llm_timeout, "--llm-path": llm_path, "--config": config,
        "--comfy-url": comfy_url, "--comfy-file": comfy_file, "--device": device, "--dtype": dtype,
        "--batch-size": batch_size, "--cpu-offload": cpu_offload})
    if server is not None:
        talk = ServerChat(server, home)
    else:
        talk = LocalChat(open_studio(home=home, engine=engine, profile=profile, model_path=model_path, scorer=scorer,
                                     llm_url=llm_url, llm_model=llm_model, llm_timeout=llm_timeout, llm_path=llm_path,
                                     config=config, comfy_url=comfy_url, comfy_file=comfy_file, device=device,
                                     dtype=dtype, batch_size=batch_size, cpu_offload=cpu_offload))
    try:
        name, last = talk.open(session)
        if last:
            out.print(f"session {name}: resumed after turn {last['turn']} ({last['idea']})", markup=False, highlight=False)
        else:
            out.print(f"session {name} (continue it later with --session {name}); /help for commands, /quit to leave",
                      markup=False, highlight=False)
        if server is not None and interactive:
            say(err, "reverie:", f"talking through the server for this home at {server.url} (--local runs it here)")
        while True:
            if interactive:
                out.print("[bold]you>[/] ", end="")
            line = sys.stdin.readline()
            if not line:
                break
            message = line.strip()
            if not message:
                continue
            if talk.is_command(message):  # slash commands answer here and never become a prompt
                try:
                    reply = talk.command(name, message)
                except ReverieError as e:
                    err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
                    continue
                if reply["quit"]:
                    break
                out.print(reply["text"], markup=False, highlight=False, soft_wrap=True)
                continue
            progress = CliProgress(quiet=not interactive)
            try:
                turn = talk.turn(name, message, options, progress)
            except ReverieError as e:
                # One bad turn does not end the conversation; the session keeps its earlier turns.
                err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
                continue
            except KeyboardInterrupt:  # Ctrl-C before the turn's run began: nothing to keep
                err.print("turn cancelled; the session goes on (/quit to leave)", markup=False, highlight=False)
                continue
            finally:
                progress.stop()
            state = " (cancelled with Ctrl-C: what it rendered is kept)" if turn["cancelled"] else ""
            out.print(f"turn {turn['turn']} (run {turn['run_id']}){state}: {turn['summary']}",
                      markup=False, highlight=False, soft_wrap=True)
            if turn["prompt"]:
                out.print(f"  prompt: {turn['prompt']}", markup=False, highlight=False, soft_wrap=True)
            print_images([{"n": i, "score": f"{r['score']:.3f} {r['scorer']}" if r["score"] is not None else "-",
                           "seed": r["seed"], "id": r["id"], "width": r["width"], "height": r["height"],
                           "prompt": r["prompt"], "path": r["path"]} for i, r in enumerate(turn["best"], 1)])
    finally:
        talk.close()


def chat_image(r) -> dict:
    """One image of a turn as `reverie chat` prints it (reverie.serve.cli_api sends the same)."""
    return {"id": r.id, "path": r.path, "seed": r.seed, "width": r.spec.width, "height": r.spec.height,
            "prompt": r.prompt, "score": r.scores.composite if r.scores else None,
            "scorer": r.scores.scorer if r.scores else None}


class LocalChat:
    """chat's turns in this process, in the shapes ServerChat gives them."""

    def __init__(self, studio):
        self.studio = studio

    def open(self, session: Optional[str]) -> tuple[str, Optional[dict]]:
        from reverie.orchestrator.chat import new_session_name, session_turns

        name = session or new_session_name()
        previous = session_turns(self.studio.store, name)
        return name, ({"turn": previous[-1]["turn"], "idea": previous[-1]["idea"]} if previous else None)

    def is_command(self, message: str) -> bool:
        from reverie.orchestrator.chat import is_command

        return is_command(message)

    def command(self, session: str, message: str) -> dict:
        from reverie.orchestrator.chat import chat_command

        reply = chat_command(self.studio, session, message)
        return {"text": reply.text, "quit": reply.quit}

    def turn(self, session: str, message: str, options: dict, progress: CliProgress) -> dict:
        turn = self.studio.chat(session, message, progress=progress, **options)
        return {"turn": turn.turn, "run_id": turn.run_id, "summary": turn.interpretation.summary, "prompt": turn.prompt,
                "cancelled": turn.cancelled,
                "best": [chat_image(r) for r in turn.best]}

    def close(self) -> None:
        self.studio.close()


class ServerChat(LocalChat):
    """chat's turns on the warm server's sessions (reverie.cli.remote.RemoteChat)."""

    def __init__(self, server, home: Optional[str]):
        from reverie.cli.remote import RemoteChat

        self.remote = RemoteChat(server, home)

    def open(self, session: Optional[str]) -> tuple[str, Optional[dict]]:
        opened = self.remote.open(session)
        return opened["session"], opened["last"]

    def command(self, session: str, message: str) -> dict:
        return self.remote.command(session, message)

    def turn(self, session: str, message: str, options: dict, progress: CliProgress) -> dict:
        from reverie.cli.remote import UnexpectedServerError

        try:
            return self.remote.turn(session, message, options, progress)
        except UnexpectedServerError as e:  # as in-process: a failure nobody caused ends the command, exit 1
            say(err, "error:", str(e), style="bold red")
            raise typer.Exit(1)

    def close(self) -> None:
        self.remote.close()
