"""Fences around the two places reverie leans on another library's private internals.

Each fails loudly, naming the file to fix, when the library moves the private name, instead of
reverie going quietly wrong:

- reverie/orchestrator/ray_pool.py replaces `ray._private.worker.print_to_stdstream` so that the
  raylet's notes (a worker died) go to stderr, not into `--json` on stdout. Ray has no public
  switch for it (`log_to_driver=False` covers workers' logs, not the raylet's error notes).
- reverie/cli/__init__.py catches typer's vendored click exceptions from `typer._click` (typer
  re-exports none of UsageError, NoArgsIsHelpError, ClickException) and, in `readable()`, replaces
  typer parameters' `display_type` and `get_usage_pieces` so help shows `--n N`, not `<int>`.

These are the only tests that name a private module of another library, and they do it as a
string through importlib: naming it is their whole point.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

from tests.conftest import run_cli

RAY_FIX = "reverie/orchestrator/ray_pool.py (_raylet_notes_to_stderr)"
TYPER_FIX = "reverie/cli/__init__.py (main and readable)"


def test_ray_still_prints_raylet_notes_through_the_function_reverie_replaces():
    pytest.importorskip("ray")
    try:
        worker = importlib.import_module("ray._private.worker")
    except ImportError:
        pytest.fail(f"ray._private.worker is gone: raylet notes would reach stdout again; fix {RAY_FIX}")
    printer = getattr(worker, "print_to_stdstream", None)
    assert callable(printer), f"ray._private.worker.print_to_stdstream is gone; fix {RAY_FIX}"
    assert list(inspect.signature(printer).parameters)[0] == "data", f"print_to_stdstream's signature changed; fix {RAY_FIX}"
    assert '"is_err"' in inspect.getsource(printer), f"print_to_stdstream no longer reads data['is_err']; fix {RAY_FIX}"
    # The raylet's notes reach it by its module-level name, so replacing the attribute takes effect.
    listener = inspect.getsource(worker.listen_error_messages)
    assert "print_to_stdstream(" in listener and '"raylet"' in listener, (
        f"Ray no longer prints raylet notes through print_to_stdstream with pid 'raylet'; fix {RAY_FIX}")


def test_typer_still_vendors_the_click_exceptions_reverie_catches():
    import typer

    try:
        exceptions = importlib.import_module("typer._click.exceptions")
    except ImportError:
        pytest.fail(f"typer._click.exceptions is gone: usage errors would print tracebacks; fix {TYPER_FIX}")
    for name in ("UsageError", "NoArgsIsHelpError", "ClickException"):
        assert hasattr(exceptions, name), f"typer._click.exceptions.{name} is gone; fix {TYPER_FIX}"
    # What typer raises is that module's class: its public BadParameter is a UsageError from it.
    assert issubclass(typer.BadParameter, exceptions.UsageError), f"typer raises another click's errors; fix {TYPER_FIX}"


def test_typer_parameters_still_have_the_methods_readable_replaces():
    import typer
    from typer.main import get_command

    app = typer.Typer()

    @app.command()
    def make(idea: str, n: int = typer.Option(4, "--n")) -> None:
        pass

    params = {p.name: p for p in get_command(app).params}
    for name in ("display_type", "get_usage_pieces"):
        assert callable(getattr(params["idea"], name, None)), f"typer's arguments lost {name}(); fix {TYPER_FIX}"
    assert hasattr(params["n"], "metavar"), f"typer's options lost .metavar; fix {TYPER_FIX}"


def test_a_mistyped_option_and_a_bare_group_still_read_as_reverie_means():
    bad = run_cli("make", "a fox", "--no-such-option")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr, bad.stderr
    bare = run_cli("models", "pull")
    assert "Traceback" not in bare.stderr, bare.stderr
    group = run_cli()
    assert group.returncode == 0 and "Usage: reverie" in group.stdout, (group.stdout, group.stderr)
