"""The command line's one error policy: the exit statuses, and the decorator every command wears.

Whatever goes wrong in a command ends as one line ``vqcodec: error: ...`` on stderr and the exit status
of its kind (``EXIT_STATUS``, shown by ``--help``), so that a script can tell a bad model from a bad
image without reading the message. Usage errors are click's own: its ``Usage:`` and ``Error:`` lines
and status 2. This module imports neither torch nor any command, so that every command (``bench``'s
too) can use it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any, NoReturn, TypeVar

import click

from vqcodec.errors import ModelFileError, ModelMismatchError, VQZError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_BAD_INPUT = 1
EXIT_USAGE = 2  # click's own status for usage errors
EXIT_MODEL = 3
EXIT_OUTPUT_EXISTS = 4
EXIT_INTERNAL = 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a process ended by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of the output went away

EXIT_STATUS = """\b
Exit status:
  0    success
  1    bad input: not a readable image, a damaged or invalid .vqz file, an I/O error
  2    usage error: bad option or argument, an OUT whose extension does not fit
  3    model problem: unknown name, bad model file, no bundled default model, or
       the file needs a model that is not available
  4    the output exists (give --force), or is the input itself
  5    internal error (a bug: please report it)
  130  interrupted (Ctrl-C); 143, 129: stopped by SIGTERM, SIGHUP
  141  the reader of the output went away (a closed pipe), quietly
With several inputs, every file is tried and the status is the first failure's."""


class CommandError(click.ClickException):
    """A failure reported as one ``vqcodec: error:`` line; each subclass carries its exit status."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"vqcodec: error: {self.format_message()}", err=True)


class BadInput(CommandError):
    exit_code = EXIT_BAD_INPUT


class OutputError(BadInput):
    """The output could not be written (no space, no permission): bad input's status, named by the
    output."""


class BadUsage(CommandError):
    exit_code = EXIT_USAGE


class ModelProblem(CommandError):
    exit_code = EXIT_MODEL


class OutputExists(CommandError):
    exit_code = EXIT_OUTPUT_EXISTS


class InternalError(CommandError):
    exit_code = EXIT_INTERNAL


def one_line(error: BaseException) -> str:
    """The error's message on one line; an OSError as ``path: reason``, without Python's ``[Errno N]``."""
    if isinstance(error, OSError) and error.strerror:
        where = error.filename if error.filename is not None else ""
        return f"{where}: {error.strerror}" if where else error.strerror
    message = str(error)
    if _WORKER_TRACEBACK in message:  # a DataLoader worker's error, re-raised with its traceback
        message = message.rstrip().splitlines()[-1].removeprefix(f"{type(error).__name__}: ")
    return " ".join(message.split()) or type(error).__name__


_WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):\n"
"""What torch's DataLoader puts between "Caught ... in DataLoader worker process N." and the worker's
traceback, whose last line is the error itself."""


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn an exception into a ``CommandError`` with the exit status of its kind; click's own exceptions
    (usage errors, ``ctx.exit``) and interrupts pass through.

    The decorator ``reports_errors`` applies it to a whole command; a command that works through several
    files applies it to each file too, so that one bad file does not stop the others."""
    try:
        yield
    except (click.ClickException, click.Abort, click.exceptions.Exit, BrokenPipeError):
        raise  # a BrokenPipeError ends the whole command (``Group``)
    except (ModelMismatchError, ModelFileError) as error:
        raise ModelProblem(one_line(error)) from error
    except FileExistsError as error:  # an API refusing to replace a file (e.g. export without force)
        raise OutputExists(one_line(error)) from error
    except (VQZError, OSError, ValueError) as error:
        raise BadInput(one_line(error)) from error
    except MemoryError as error:
        raise BadInput("out of memory") from error
    except Exception as error:
        message = f"internal error: {type(error).__name__}: {one_line(error)}"
        raise InternalError(message) from error


def reports_errors(command: F) -> F:
    """The decorator every command wears under its click decorators: its errors follow ``errors()``."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with errors():
            return command(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def interrupted() -> NoReturn:
    """End the process as Ctrl-C should: one line and status 130 (click's own says 'Aborted!', 1)."""
    click.echo("\nvqcodec: interrupted", err=True)
    sys.exit(EXIT_INTERRUPTED)


class Terminated(BaseException):
    """SIGTERM or SIGHUP (``kill``, ``timeout``, a closed terminal), raised where the process is, as
    Ctrl-C is: what is being written is removed on the way out (``cli_files.write_output``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def terminations_raised() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``Terminated`` while the block runs, where their default would
    end the process on the spot (one ignored, as under ``nohup``, stays ignored)."""
    names = ("SIGTERM", "SIGHUP")
    signums = [getattr(signal, name) for name in names if hasattr(signal, name)]
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (a command run from a thread, as in tests)
        return
    before = {signum: signal.getsignal(signum) for signum in signums}
    for signum, handler in before.items():
        if handler is signal.SIG_DFL:
            signal.signal(signum, _terminate)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _of_the_output(error: OSError) -> bool:
    """Whether ``error`` escaped from writing the process's own output (stdout): a closed pipe, or a
    device error with no file named (anything else, a library failing to load say, is not)."""
    full = (errno.ENOSPC, errno.EIO, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))
    return isinstance(error, BrokenPipeError) or (error.errno in full and error.filename is None)


def output_failed(error: OSError) -> NoReturn:
    """End the process when its output cannot be written: quietly, with the status a process killed by
    SIGPIPE has, when the reader went away (``vqcodec models | true``), else with one line (its
    ``--help`` into a full disk); stdout goes to /dev/null, so that Python's last flush is quiet."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if isinstance(error, BrokenPipeError):
        sys.exit(EXIT_BROKEN_PIPE)
    with contextlib.suppress(OSError):
        click.echo(f"vqcodec: error: cannot write the output: {one_line(error)}", err=True)
    sys.exit(EXIT_BAD_INPUT)


class Group(click.Group):
    """Click's group, ending on Ctrl-C with status 130 wherever it comes: in a command, or while the
    options are parsed (a ``--device`` check imports torch, which takes a while); on SIGTERM or SIGHUP
    with 128 + its number, once what it was writing is removed; and with one line if its own text
    cannot be written."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except OSError as error:  # the top level's --help or --version, into a full disk or closed pipe
            if not _of_the_output(error):
                raise
            output_failed(error)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with terminations_raised():
                return super().invoke(ctx)
        except KeyboardInterrupt:
            interrupted()
        except Terminated as terminated:
            with contextlib.suppress(OSError):
                click.echo(f"vqcodec: {signal.Signals(terminated.signum).name}: stopped", err=True)
            sys.exit(128 + terminated.signum)
        except OSError as error:  # a closed pipe, or a command's --help: other errors are CommandErrors
            if not _of_the_output(error):
                raise
            output_failed(error)
        except click.Abort as abort:
            if isinstance(abort.__context__, KeyboardInterrupt):
                interrupted()
            raise
