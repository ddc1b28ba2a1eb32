"""The CLI's debug stream: third-party warnings, logs and stray stderr output while a command runs.

transformers, peft, bitsandbytes and torch speak on stderr (``warnings.warn``, their own logging
handlers, logging's last-resort handler): bitsandbytes' "Failed to load CPU gemm_4bit_forward ..." on
every import of peft, torch's fake-tensor error log before a trace falls back. The CLI's output must be
lora-doctor's own, so :func:`debug_stream` routes all of that to a sink: stderr with ``-v/--verbose``,
nowhere otherwise. It is used once, at the CLI edge (:mod:`lora_doctor.cli`); the library API never
touches the caller's logging or warnings configuration.
"""

from __future__ import annotations

import io
import logging
import sys
import warnings
from contextlib import contextmanager
from typing import IO, Any, Iterator


class _Redirect(io.TextIOBase):
    """A stderr stand-in that forwards to ``target``; handlers created while a command runs keep it
    after the command, so it then forwards to the stderr that was current before."""

    def __init__(self, target: IO[str] | None) -> None:
        self.target = target

    def write(self, text: str) -> int:
        if self.target is not None:
            try:
                self.target.write(text)
            except (OSError, ValueError):  # a closed or failing debug sink must not break the command
                pass
        return len(text)

    def flush(self) -> None:
        if self.target is not None:
            try:
                self.target.flush()
            except (OSError, ValueError):
                pass

    def isatty(self) -> bool:
        return False


def _stderr_handlers(stream: Any) -> list[logging.StreamHandler]:
    """Existing logging handlers that write to ``stream`` (e.g. transformers' and torch's own)."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    found = []
    for logger in loggers:
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and handler.stream in (stream, sys.__stderr__):
                found.append(handler)
    return found


@contextmanager
def debug_stream(verbose: bool) -> Iterator[IO[str]]:
    """Route third-party stderr output to stderr when ``verbose``, else drop it. Yields the real stderr,
    where lora-doctor's own error line goes."""
    real = sys.stderr
    redirect = _Redirect(real if verbose else None)
    handlers = _stderr_handlers(real)
    previous = [h.setStream(redirect) for h in handlers]
    sys.stderr = redirect
    root_handler = logging.StreamHandler(redirect)  # instead of logging's last resort, which a caller's root
    root_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))  # handlers disable
    logging.getLogger().addHandler(root_handler)
    try:
        with warnings.catch_warnings():
            if verbose:
                warnings.simplefilter("default")
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: redirect.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            yield real
    finally:
        logging.getLogger().removeHandler(root_handler)
        sys.stderr = real
        redirect.target = real  # handlers created meanwhile (a first import of transformers) point back at stderr
        for handler, stream in zip(handlers, previous):
            if stream is not None:
                handler.setStream(stream)
