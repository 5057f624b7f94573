"""Why a remote call failed, in one line: the root cause of an actor failure, for people.

A failure inside a Ray actor reaches the driver as a Ray exception whose text wraps the actor's
own exception in a remote traceback (with terminal colour codes). Users need the actor's
exception type and message, not the wrapper: :class:`ActorFailure` carries exactly that, with
the full text kept in ``detail`` for ``--debug``. Ray-free, so the CLI and in-process tests use
it without starting Ray.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_EXCEPTION_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)(?::\s?(.*))?$")
_TYPE_IN_TEXT = re.compile(
    r"(?<![\w.])((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Timeout|Failure)): ")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour and cursor codes (``\\x1b[36m`` ...)."""
    return _ANSI.sub("", text)


def one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line: lines joined with a space, runs of whitespace collapsed, at most
    ``limit`` characters (cut with ``...``)."""
    flat = " ".join(strip_ansi(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


def exception_from_traceback(text: str) -> tuple[str | None, str]:
    """The exception a Python traceback text ends with.

    Args:
        text: A formatted traceback, e.g. the text of Ray's ``ActorDiedError`` for an actor whose
            constructor raised (frames, then ``SomeError: message``, possibly several lines).

    Returns:
        ``(type name, message)`` of the last exception, the type without its module
        (``"ValueError"``), or ``(None, text)`` if ``text`` holds no traceback frame.
    """
    lines = strip_ansi(text).splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    if not frames:
        return None, text.strip()
    i = frames[-1] + 1
    while i < len(lines) and (not lines[i].strip() or lines[i][0].isspace()):
        i += 1  # the frame's source line and its ^^^ markers
    if i >= len(lines):
        return None, text.strip()
    match = _EXCEPTION_LINE.match(lines[i])
    if match is None:
        return None, "\n".join(lines[i:]).strip()
    rest = "\n".join([match.group(2) or "", *lines[i + 1:]]).strip()
    return match.group(1).rsplit(".", 1)[-1], rest


def root_cause_line(error: BaseException | str) -> str:
    """One line naming the root cause of ``error``: ``"ExceptionType: message"``.

    For an :class:`ActorCallError` it lists each failed call (``"cloud: ValueError: ..."``). For
    other exceptions or text the first ``SomeError: ...`` inside the text is the root cause (the
    platform's messages wrap it in call names); without one, the exception's own type is named.
    """
    if isinstance(error, ActorCallError):
        return one_line("; ".join(f"{key}: {f.message}" for key, f in error.failures.items()))
    text = strip_ansi(str(error))
    match = _TYPE_IN_TEXT.search(text)
    if match is not None:
        return one_line(text[match.start():])
    if isinstance(error, BaseException):
        return one_line(f"{type(error).__name__}: {text}" if text else type(error).__name__)
    return one_line(text)


@dataclass
class ActorFailure:
    """Why a call to one actor produced no result.

    Attributes:
        key: The call's key (device name, ``"cloud"``, ...).
        kind: ``"dead"`` (the actor process is gone or its constructor raised), ``"error"`` (the
            method raised) or ``"timeout"``.
        message: One line, the root cause: ``"ExceptionType: message"`` as raised inside the actor
            (for ``timeout``: how long was waited).
        error_type: The root exception's type name, e.g. ``"BudgetTooSmallError"`` (``None`` for
            a timeout).
        detail: The full text Ray reported, remote traceback included, without colour codes.
    """

    key: str
    kind: str
    message: str
    error_type: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        return self.message


class ActorCallError(RuntimeError):
    """Calls that had to succeed failed; ``str()`` is one ``"<key>: <root cause>"`` per failure.

    Args:
        failures: The failed calls by key.
    """

    def __init__(self, failures: dict[str, ActorFailure]) -> None:
        self.failures = dict(failures)
        super().__init__("; ".join(f"{key}: {f.message}" for key, f in self.failures.items()))
