"""Exit codes and the errors that carry them to L{twistkv.cli.main}.

Every failure the CLI expects is one of these: C{main} prints its message as a single
line on stderr and exits with its code. Anything else is a bug, still reported in one
line (set C{TWISTKV_DEBUG=1} for the traceback).
"""

from __future__ import annotations

__all__ = [
    "EXIT_OK",
    "EXIT_NOT_FOUND",
    "EXIT_USAGE",
    "EXIT_UNREACHABLE",
    "EXIT_UNAVAILABLE",
    "EXIT_SERVER",
    "CLIError",
    "NotFound",
    "UsageError",
    "Unreachable",
    "Unavailable",
    "ServerError",
]

#: Success.
EXIT_OK = 0
#: C{get}: the key does not exist.
EXIT_NOT_FOUND = 1
#: Bad arguments, a malformed address or input file.
EXIT_USAGE = 2
#: No server answered at the address (refused, timed out, reset).
EXIT_UNREACHABLE = 3
#: The server answered C{-UNAVAILABLE}: the quorum could not be reached.
EXIT_UNAVAILABLE = 4
#: Any other error answer, or a local failure (a launcher process that would not start...).
EXIT_SERVER = 5


class CLIError(Exception):
    """A failure with a one-line message and the exit code it maps to."""

    code = EXIT_SERVER

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class NotFound(CLIError):
    code = EXIT_NOT_FOUND


class UsageError(CLIError):
    code = EXIT_USAGE


class Unreachable(CLIError):
    code = EXIT_UNREACHABLE


class Unavailable(CLIError):
    code = EXIT_UNAVAILABLE


class ServerError(CLIError):
    code = EXIT_SERVER
