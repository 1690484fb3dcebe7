"""The `reverie` command line: a thin layer over Studio.

Every command is registered here, in the order `reverie --help` lists them; the command modules
import only reverie.cli.common, never this package, so the CLI has no import circle.
"""

from __future__ import annotations

import sys

import typer

from reverie.cli import agents, batch, edit, lineage, mcp, models, runs, scoring, serve, taste
from reverie.cli.common import VERBOSE, err, say

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, help="reverie: terse idea in, excellent images out, every one explained.")

for command in (runs.make, edit.edit, runs.runs, runs.show, agents.expand, batch.batch, batch.chat, lineage.lineage, lineage.reproduce,
                lineage.export, scoring.score, taste.pick, taste.reject, taste.taste, serve.serve, mcp.mcp):
    app.command()(command)
app.add_typer(models.models_app, name="models")


def readable(command):
    """Metavars a person reads (`--n N`, `IDEA`, bare flags) instead of typer's `<int>` and `{idea}`."""
    for param in getattr(command, "params", []):
        # Duck-typed: recent typer vendors its own click, whose classes are not click's.
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
        elif param.metavar is None:
            param.metavar = (param.name or "value").upper()
        if getattr(param, "param_type_name", "") == "argument":
            param.display_type = lambda ctx: None  # the metavar says it; typer would add `<str>`
            # Usage reads `reverie make [OPTIONS] IDEA`, not typer's `{IDEA}`; optional ones in [ ].
            usage = param.metavar if param.required else f"[{param.metavar}]"
            usage += "..." if param.nargs != 1 else ""
            param.get_usage_pieces = lambda ctx, usage=usage: [usage]
    for sub_command in getattr(command, "commands", {}).values():
        readable(sub_command)
    return command


def version_callback(value: bool) -> None:
    if value:
        from reverie.version import __version__

        print(f"reverie {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                      help="Print the version and exit."),
         verbose: bool = typer.Option(False, "--verbose", help="Print the traceback of an error too (it is always "
                                      "in <home>/logs/); may also follow the command.")) -> None:
    """reverie: terse idea in, excellent images out, every one explained."""
    if verbose:
        VERBOSE["on"] = True


def verbose_anywhere(argv: list[str]) -> list[str]:
    """`--verbose` after the command too (`reverie make IDEA --verbose`), where people type it."""
    head, sep, tail = (argv[:argv.index("--")], ["--"], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [], [])
    if "--verbose" in head[1:]:
        VERBOSE["on"] = True
        head = [a for a in head if a != "--verbose"]
    return head + sep + tail


def main() -> None:
    """Run the CLI; a mistyped command or option is one `error:` line too, not a usage box."""
    try:  # recent typer vendors its own click
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as cx

    from reverie.interrupts import interrupted_code, terminate_as_interrupt

    terminate_as_interrupt()
    try:
        code = readable(typer.main.get_command(app))(args=verbose_anywhere(sys.argv[1:]), standalone_mode=False)
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
        sys.exit(interrupted_code())
    except cx.ClickException as e:
        say(err, "error:", e.format_message(), style="bold red")
        sys.exit(e.exit_code)
    leave(code if isinstance(code, int) else 0)


def leave(code: int) -> None:
    """Exit now that everything is written and closed. With torch loaded, the interpreter's own
    teardown (module by module, torch's last) took seconds after the last line; skipping it loses
    nothing: the store is committed and closed, and the streams and log are flushed here. Ray's
    exit hook stops its processes, so with Ray loaded the ordinary exit runs."""
    if "torch" not in sys.modules or "ray" in sys.modules:
        sys.exit(code)
    import logging
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)

