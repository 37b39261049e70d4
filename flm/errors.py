"""The errors a user can cause, and the library failures each command line reports as one line.

:class:`UsageError` is an option, setting or input that cannot work (a device this machine does
not have, more workers than its cores, an unknown metric); :class:`UnreachableError` is a server
that does not answer (an MLflow tracking server, a Ray cluster). Both messages are one line naming
the option, setting, path or address.

:func:`expected_errors` lists the exception classes every entry point (``flm generate``,
``python -m pipelines.run``, ``python -m pipelines.data_stages``) turns into exit status 2 and
one line: these, the parameter and data errors, and the libraries' expected failures (a corrupt
JSON or safetensors file, MLflow's not-found and connection errors). Anything else is a bug and
keeps its traceback. :class:`OneLineParser` gives argparse's own errors the same shape.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

__all__ = ["OneLineParser", "UnreachableError", "UsageError", "expected_errors", "one_line"]


class UsageError(ValueError):
    """An option, setting or input that cannot work; the message is one line naming it."""


class UnreachableError(ConnectionError):
    """A server (MLflow tracking, a Ray cluster) that does not answer; the message names its address."""


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception classes the command lines report as one line with exit status 2.

    A library's class is listed only once the library is imported (it cannot have raised before),
    so calling this imports neither MLflow nor safetensors.
    """
    from flm.config import ConfigError
    from flm.data.errors import DataError

    found: list[type[BaseException]] = [UsageError, UnreachableError, ConfigError, DataError, json.JSONDecodeError,
                                        UnicodeDecodeError]
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None:
        found.append(safetensors.SafetensorError)
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if mlflow_exceptions is not None:
        found.append(mlflow_exceptions.MlflowException)  # RestException (a server's answer) is one
    return tuple(found)


def one_line(err: BaseException) -> str:
    """``err``'s message on one line: its first non-empty line (library messages can run to pages)."""
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``PROG: error: MESSAGE (see PROG --help)``), exit 2.

    argparse prints the whole usage first, which buries the message under the option list.
    Subparsers inherit the class.
    """

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line to stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")
