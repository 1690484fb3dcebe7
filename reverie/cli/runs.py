"""`make`, and the commands that look at runs: `runs` and `show`."""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from reverie.cli.common import (BATCH_SIZE, CFG, COMFY_FILE, COMFY_URL, CONFIG, CPU_OFFLOAD, DEVICE, DTYPE, ENGINE, EXACT, HANDOFF_STEPS, HOME,
                                LLM_MODEL, LLM_PATH, LLM_TIMEOUT, LLM_URL, MODEL_PATH, NEGATIVE, PROFILE, SAMPLER, SCORER, STEPS, STYLE,
                                CliProgress, controls, err, friendly, open_studio, out, print_images, print_paths, say)
from reverie.types import ReverieError


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
    shift: Optional[float] = typer.Option(None, "--shift", metavar="S", help="Flow-matching shift (Z-Image ships 3; 6-7 gives more varied seeds)."),
    blind_steps: int = typer.Option(0, "--blind-steps", metavar="N", help="First steps on empty conditioning, for more varied compositions (0-2 typical)."),
    embed_noise: float = typer.Option(0.0, "--embed-noise", metavar="X", help="Seeded noise on the text embeddings, a share of their spread (0.05-0.2): more varied seeds on distilled models."),
    diversity: Optional[float] = typer.Option(None, "--diversity", metavar="W", help="Keep different good images, not near-winners: 0 is plain top-K by score; default 0.3 (or [scoring] diversity)."),
    search: str = typer.Option("seeds", "--search", metavar="HOW", help="seeds: re-roll seeds each round; noise: search the initial noise's low frequencies, refitted to the best so far (in-process Z-Image)."),
    preview_steps: int = typer.Option(0, "--preview-steps", metavar="S", help="With --search noise: judge 4 noise candidates per seed on an S-step preview, render the best in full (previews count in the budget by their step share)."),
    steps: Optional[int] = STEPS,
    cfg: Optional[float] = CFG,
    negative: Optional[str] = NEGATIVE,
    sampler: Optional[str] = SAMPLER,
    exact: bool = EXACT,
    handoff_steps: int = HANDOFF_STEPS,
    style: Optional[str] = STYLE,
    home: Optional[str] = HOME,
    model_path: Optional[str] = MODEL_PATH,
    llm_url: Optional[str] = LLM_URL,
    llm_model: Optional[str] = LLM_MODEL,
    llm_timeout: Optional[float] = LLM_TIMEOUT,
    llm_path: Optional[str] = LLM_PATH,
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
    local: bool = typer.Option(False, "--local", help="Run in this process even when `reverie serve` runs for this home."),
):
    """Expand an idea, render, score and loop; print the best images."""
    progress = CliProgress(quiet=as_json)
    if control != "auto" and not ref:
        raise ReverieError(f"--control {control} needs a reference image: add --ref PATH")
    # The server's engine, scorer and prompt writer are its own: flags for this process's keep it here.
    own = {"--engine": engine != "auto", "--scorer": scorer != "auto", "--model-path": model_path, "--llm-url": llm_url,
           "--llm-model": llm_model, "--llm-timeout": llm_timeout, "--llm-path": llm_path, "--config": config,
           "--ref": ref, "--comfy-url": comfy_url, "--comfy-file": comfy_file, "--device": device, "--dtype": dtype,
           "--batch-size": batch_size, "--cpu-offload": cpu_offload}
    # Studio.make's options, built once: the warm server gets them as they are, so a new one travels.
    options = dict(n=n, rounds=rounds, target=target, aspect=aspect, megapixels=megapixels, profile=profile, seed=seed,
                   shift=shift, blind_steps=blind_steps, embed_noise=embed_noise, diversity=diversity, search=search,
                   preview_steps=preview_steps, **controls(steps, cfg, negative, sampler, exact, style, handoff_steps))
    from reverie.cli.remote import handing_server

    server = handing_server(home, local, own)
    if server is not None:
        return make_remote(server, progress, as_json, idea=idea, options=options, home=home)
    studio = open_studio(home=home, engine=engine, profile=profile, scorer=scorer, model_path=model_path, llm_url=llm_url,
                         llm_model=llm_model, llm_timeout=llm_timeout, llm_path=llm_path, config=config,
                         comfy_url=comfy_url, comfy_file=comfy_file, device=device, dtype=dtype, batch_size=batch_size,
                         cpu_offload=cpu_offload)
    references = [{"path": ref, "control": control}] if ref else []
    try:
        result = studio.make(idea, progress=progress, references=references, **options)
    finally:
        progress.stop()
        studio.close()
    print_made(result.to_dict(), [r.scores.scorer if r.scores else None for r in result.best], as_json)


def make_remote(server, progress: CliProgress, as_json: bool, **request) -> None:
    """make on the warm server: its events drive the same progress bar; Ctrl-C stops the run there."""
    from reverie.cli.remote import home_of, remote_make, run_remote

    request["home"] = home_of(request["home"])
    print_made(*run_remote(server, progress, as_json, lambda on_request: remote_make(server, request, progress, on_request)),
               as_json)


def print_made(made: dict, scorers: list, as_json: bool) -> None:
    """make's answer, the same whether this process or the warm server ran it."""
    if as_json:
        print(json.dumps(made, ensure_ascii=False))
        return
    # A title line, not the table's title: the narrow table would wrap it into a column.
    out.print(Text(f"best of run {made['run_id']} ({made['renders']} renders; {made['stop_reason']})", style="bold"),
              highlight=False)
    print_images([{"n": i, "score": f"{r['scores']['composite']:.3f} {scorer or ''}".strip() if r["scores"] else "-",
                   "seed": r["seed"], "id": r["id"], "width": r.get("width"), "height": r.get("height"),
                   "prompt": r.get("prompt"), "path": r["path"]}
                  for i, (r, scorer) in enumerate(zip(made["best"], scorers + [None] * len(made["best"])), 1)])
    out.print(f"run id: {made['run_id']}   (reverie show {made['run_id']})", highlight=False)


def one_line(text: str, width: int) -> str:
    """A stored error on one line, cut at a word within `width` (a traceback's last line says the most)."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = " ".join(lines) if len(lines) <= 2 else lines[-1]
    width = max(width, 20)
    if len(line) <= width:
        return line
    cut = line[:width - 1].rsplit(" ", 1)[0]
    return (cut if len(cut) > width // 2 else line[:width - 1]) + "…"


@friendly
def runs(
    home: Optional[str] = typer.Option(None, "--home"),
    limit: int = typer.Option(30, "--limit"),
    as_json: bool = typer.Option(False, "--json"),
):
    """List runs, newest first."""
    from reverie.config import resolve_home
    from reverie.store.db import Store

    store = Store(resolve_home(home), read_only_ok=True)
    rows = store.list_runs(limit)
    if as_json:
        print(json.dumps([{**{k: r[k] for k in ("id", "idea", "profile", "engine", "status", "renders", "best", "created")},
                           "scorer": r["best_scorer"], "stop_reason": r.get("stop_reason") or ""} for r in rows]))
        return
    # Full run ids at any width (show and export need them); the idea is the column that gives way.
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("run", no_wrap=True, min_width=22)
    table.add_column("status", no_wrap=True, min_width=11)
    table.add_column("images", no_wrap=True, justify="right", min_width=6)
    table.add_column("best", no_wrap=True, justify="right", min_width=5)
    table.add_column("profile", no_wrap=True, min_width=7, max_width=13, overflow="ellipsis")
    table.add_column("idea", ratio=1, overflow="ellipsis", no_wrap=True)
    for r in rows:
        table.add_row(r["id"], r["status"], str(r["renders"]), f"{r['best']:.3f}" if r["best"] is not None else "-",
                      r["profile"], Text(r["idea"]))
    out.print(table)
    failed = [r for r in rows if r["status"] in ("failed", "interrupted") and r.get("stop_reason")]
    if failed:  # why, one line each under the table: a table cell would cut the reason to a few words
        out.print(Text("why they stopped:", style="bold"), highlight=False)
        for r in failed:
            out.print(Text(f"{r['id']}  ").append(one_line(r["stop_reason"], out.width - len(r["id"]) - 2)),
                      highlight=False, no_wrap=True)
    used = sorted({r["best_scorer"] for r in rows if r["best_scorer"]})
    if used:  # a heuristic score and a CLIP score are not the same scale: say which made each best
        out.print(Text("best scores by " + ", ".join(used)), highlight=False)


@friendly
def show(
    run_id: str = typer.Argument(..., help="A run id (a unique prefix is enough)."),
    home: Optional[str] = typer.Option(None, "--home"),
    as_json: bool = typer.Option(False, "--json"),
    explain: bool = typer.Option(False, "--explain", help="Say what each score component of the best image means, a line each."),
):
    """Show the tree of one run: idea, prompts, renders, scores, and where they were rendered."""
    from reverie.config import resolve_home
    from reverie.scoring.display import held_out_line
    from reverie.store.db import Store

    from reverie.config import load_config
    from reverie.orchestrator.curation import clip_embedder, home_best

    store = Store(resolve_home(home), read_only_ok=True)
    tree = store.run_tree(run_id)
    # CLIP image embeddings for the portfolio where CLIP scored the run and is here; else pixel signatures.
    embed = clip_embedder(store, tree["run"]["id"], load_config(store.home))
    pick = store.judge_pick(tree["run"]["id"])
    # The run's best as every way in chooses them: the VLM judge's pick first.
    tree["best"] = [{"id": r.id, "path": r.path, "seed": r.seed, "score": r.scores.composite if r.scores else None,
                     "judge_pick": bool(pick and pick["render_id"] == r.id)}
                    for r in home_best(store, tree["run"]["id"], 4, embed=embed)]
    if as_json:
        print(json.dumps(tree, ensure_ascii=False, default=str))
        return
    run = tree["run"]
    root = Tree(f"[bold]{run['id']}[/]  {run['status']}  [dim]{escape(run['stop_reason'] or '')}[/]\nidea: {escape(run['idea'])}")

    def add(node: Tree, p: dict) -> None:
        label = escape(f"prompt {p['id']} [{p['source']}] round {p['round']}" + (f" — {p['reason']}" if p["reason"] else ""))
        # The whole prompt: it is what made the images, and a cut one cannot be copied or compared.
        child = node.add(f"{label}\n[dim]{escape(p['text'])}[/]")
        for r in p["renders"]:
            s = r["scores"] or {}
            score = f"{s.get('composite', 0):.3f} ({store.scores_for(r['id']).scorer})" if s else r["status"]
            # A prompt kept for another round gets new seeds; the render's own round says which.
            # The path goes in the list below the tree, where nothing wraps it; an error stays here.
            on = f" on {r['worker']}" if r.get("worker") not in (None, "", "local") else ""
            edit = ""
            if r.get("source_sha"):  # an edit: its image parent and what it was asked to change
                parent = (f"render {r['source_render_id']}" if r.get("source_render_id") is not None
                          else f"file {r['source_sha'][:12]}")
                edit = f"\n  edit of {parent}: {r.get('instruction')!r}"
            child.add(Text(f"render {r['id']} round {r['round']} seed {r['seed']} score {score}{on}" + edit
                           + (f"\n{r['error']}" if r["error"] and not r["path"] else "")))
            if r["path"]:
                paths.append((f"render {r['id']}", r["path"]))
        for c in p["children"]:
            add(child, c)

    paths: List[tuple[str, str]] = []
    for p in tree["prompts"]:
        add(root, p)
    out.print(root, highlight=False)
    out.print(Text(held_out_line(store, run["id"])), highlight=False)
    from reverie.orchestrator.curation import diversity_line, portfolio_line

    out.print(Text(diversity_line(store, run["id"])), highlight=False)
    out.print(Text(portfolio_line(store, run["id"], len(tree["best"]) or 4, load_config(store.home), embed)),
              highlight=False)
    if tree["best"]:
        out.print(Text("best: " + ", ".join(f"render {b['id']}" + (" (the VLM judge's pick)" if b["judge_pick"] else "")
                                            for b in tree["best"])), highlight=False)
    out.print(Text(worker_line(tree)), highlight=False, soft_wrap=True)
    if explain and tree["best"]:
        from reverie.scoring.explain import explain_scores

        best = store.scores_for(tree["best"][0]["id"])
        if best is not None:
            out.print(Text(f"scores of render {tree['best'][0]['id']} (the best), by the {best.scorer} scorer:", style="bold"),
                      highlight=False)
            grid = Table.grid()  # indented, and wrapped under itself at any width
            grid.add_column(width=2)
            grid.add_column(ratio=1, overflow="fold")
            for line in explain_scores({"composite": best.composite, "scorer": best.scorer, **best.values}).values():
                grid.add_row("", Text(line))
            out.print(grid, highlight=False)
    if paths:
        out.print("[bold]images[/]")
        print_paths(paths)


def worker_line(tree: dict) -> str:
    """Which machines rendered the run's images: ComfyUI servers and Ray lanes by name, this machine
    with the device its PNGs record (cpu, cuda:0, mps)."""
    import json as json_module

    from reverie.store.lineage import image_chunks

    counts: dict[str, int] = {}
    first: dict[str, str] = {}

    def walk(prompts: list) -> None:
        for p in prompts:
            for r in p["renders"]:
                if r["path"]:
                    counts[r["worker"]] = counts.get(r["worker"], 0) + 1
                    first.setdefault(r["worker"], r["path"])
            walk(p["children"])

    walk(tree["prompts"])
    if not counts:
        return "rendered on: nothing rendered"
    named = []
    for worker, count in counts.items():
        where = worker
        if worker == "local":
            where = "this machine"
            try:
                meta = json_module.loads(image_chunks(first[worker]).get("reverie") or "{}")
                device = (meta.get("versions") or {}).get("device")
                where += f" ({meta.get('engine') or tree['run']['engine']} engine on {device})" if device else ""
            except (ReverieError, OSError, ValueError):  # a moved or damaged file: the row's name alone
                pass
        named.append(f"{where}: {count} image{'s' if count != 1 else ''}")
    return "rendered on " + "; ".join(named)
