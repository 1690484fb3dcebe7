"""CLI commands for agents (registered on the app in reverie.cli)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from reverie.cli.common import CONFIG, LLM_MODEL, LLM_PATH, LLM_TIMEOUT, LLM_URL, CliProgress, friendly, out
from reverie.profiles import DEFAULT_PROFILE


@friendly
def expand(
    idea: str = typer.Argument(..., help="What to make, in a few words."),
    profile: str = typer.Option(DEFAULT_PROFILE, "--profile", help="Model profile whose prompt style to write."),
    k: int = typer.Option(1, "--k", help="How many different interpretations (1-8)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the offline formula expander."),
    llm_url: Optional[str] = LLM_URL,
    llm_model: Optional[str] = LLM_MODEL,
    llm_timeout: Optional[float] = LLM_TIMEOUT,
    llm_path: Optional[str] = LLM_PATH,
    config: Optional[str] = CONFIG,
    home: Optional[str] = typer.Option(None, "--home", help="Data folder (LLM calls are recorded there)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of text."),
    local: bool = typer.Option(False, "--local", help="Run in this process even when `reverie serve` runs for this home."),
):
    """Print prompt expansions of an idea without rendering anything."""
    from reverie.cli.remote import handing_server, home_of, remote_expand
    from reverie.profiles import get_profile
    from reverie.types import ReverieError

    if not 1 <= k <= 8:
        raise ReverieError(f"k must be between 1 and 8 (got {k}): pass --k 3 for three interpretations")
    # The server's prompt writer is its own: flags for this process's keep it here.
    server = handing_server(home, local, {"--llm-url": llm_url, "--llm-model": llm_model, "--llm-timeout": llm_timeout,
                                          "--llm-path": llm_path, "--config": config})
    if server is not None:  # the server checks the idea as below, with the same line
        expansions = remote_expand(server, {"idea": idea, "profile": get_profile(profile).name, "k": k, "seed": seed,
                                            "home": home_of(home)}, CliProgress(quiet=True))
        return print_expansions(expansions, as_json)
    from reverie.orchestrator.requests import clean_idea
    from reverie.orchestrator.studio import Studio

    text = clean_idea(idea)
    chosen = get_profile(profile)

    with Studio(home=home, profile=profile, llm_url=llm_url, llm_model=llm_model, llm_timeout=llm_timeout,
                llm_path=llm_path, config=config) as studio:
        progress = CliProgress(quiet=True)
        # The encoder backend writes with the engine's own text encoder: only then is an engine needed.
        engine = studio.engine_for(chosen, progress) if studio.llm_backend() == "encoder" else None
        expander, _ = studio.expander_and_critic(progress, engine)
        expansions = expander.expand(text, chosen, k=k, seed=seed)
    print_expansions([e.to_dict() for e in expansions], as_json)


def print_expansions(expansions: list[dict], as_json: bool) -> None:
    """expand's answer, the same whether this process or the warm server wrote it."""
    if as_json:
        print(json.dumps(expansions, ensure_ascii=False))
        return
    for i, e in enumerate(expansions, 1):
        label = f"[{i}] {e['source']}" + (f" ({e['model']})" if e["model"] else "") + (f": {e['reason']}" if e["reason"] else "")
        out.print(label, style="bold", highlight=False, markup=False)
        out.print(e["prompt"], highlight=False, markup=False, soft_wrap=True)
        if e["negative"]:
            out.print(f"Negative prompt: {e['negative']}", highlight=False, markup=False, soft_wrap=True)
        out.print()
