"""The one user-facing error type.

It lives below everything else (reverie.profiles raises it, and reverie.types reads the default
profile from there); everyone else spells it reverie.types.ReverieError.
"""


class ReverieError(Exception):
    """A user-facing error: its message is one line that names the fix.

    The CLI prints it without a traceback; the Python API lets it propagate.
    """
