"""Inputs and outputs of the codec's commands: which file becomes which, never writing over an input or
an existing file unasked, atomic writes, stdin and stdout (``-``), progress and summaries.

Nothing here knows of images or models: ``compress`` and ``decompress`` hand ``run_jobs`` the work of
one file, and ``run_jobs`` reports each file's success or error.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

import click

from vqcodec.cli_errors import BadInput, CommandError, OutputError, OutputExists, errors

_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Job:
    """One input and the output it becomes."""

    source: str
    target: str


def plan_jobs(paths: Sequence[str], out_dir: str | None, suffix: str) -> list[Job]:
    """IN OUT, or with ``out_dir`` every path an input whose output is ``out_dir/<stem><suffix>``."""
    if "" in paths or out_dir == "":
        raise click.UsageError("a path is empty")
    if out_dir is None:
        if len(paths) != 2:
            got = "no IN" if not paths else "no OUT" if len(paths) == 1 else f"{len(paths)} paths"
            raise click.UsageError(f"{got}: give IN and OUT, or several inputs and -o FOLDER")
        return [Job(*paths)]
    if not paths:
        raise click.UsageError("no input files")
    if "-" in paths:
        raise click.UsageError("'-' (stdin) needs a single IN and OUT, not -o FOLDER")
    jobs = [Job(path, str(Path(out_dir) / (Path(path).stem + suffix))) for path in paths]
    targets: dict[str, str] = {}
    for job in jobs:
        if job.target in targets:
            raise click.UsageError(
                f"{targets[job.target]} and {job.source} would both be written to {job.target}"
            )
        targets[job.target] = job.source
    return jobs


def check_output(job: Job, force: bool) -> None:
    """Refuse to overwrite an existing output without --force, and the input itself ever, even when
    one of them is stdin or stdout redirected from or to the other."""
    if job.target == "-":
        stdout = standard_stream("stdout")
        if stdout.isatty():
            raise click.UsageError("refusing to write binary data to a terminal; redirect stdout")
        if job.source != "-" and _is_stream_of(stdout, Path(job.source)):
            raise OutputExists(f"stdout is the input file {job.source}; refusing to overwrite it")
        return
    out, source = Path(job.target), Path(job.source)
    if _last_component(job.target) in ("", ".", ".."):  # Path() drops a final / or /.: a file of that name
        raise BadInput(f"{job.target} names a folder: give a file name (or -o FOLDER)")
    if job.source == "-":
        if _is_stream_of(standard_stream("stdin"), out):
            raise OutputExists(f"{job.target} is the file stdin reads; refusing to overwrite it")
    elif _resolved(out) == _resolved(source) or _same_file(out, source):
        raise OutputExists(f"{job.target} is the input file; refusing to overwrite it")
    if out.is_dir():
        raise BadInput(f"{job.target} is a folder")
    if (out.exists() or out.is_symlink()) and not force and not is_special(out):
        raise OutputExists(f"{job.target} exists (use --force to overwrite it)")
    if not out.parent.is_dir():
        raise BadInput(f"{out.parent}: no such folder for the output")


def _last_component(target: str) -> str:
    """The last component of a path as written, before ``Path`` normalises it away."""
    for separator in {"/", os.sep}:
        target = target.rsplit(separator, 1)[-1]
    return target


def is_special(path: Path) -> bool:
    """Whether ``path`` is, or links to, a pipe or a character device (/dev/null, a terminal). Such an
    output is written in place, as other tools do, not replaced by a file, and needs no --force: its
    data goes to a reader, nothing stored is overwritten. (A block device, a disk, is refused as an
    existing output is without --force; with it, ``write_output`` refuses it still.)"""
    return _streams(_mode(path))


def _streams(mode: int | None) -> bool:
    """Whether a file of ``mode`` is a pipe or a character device (``is_special``)."""
    return mode is not None and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode))


def _mode(path: Path) -> int | None:
    """The mode of what ``path`` is or links to; None if there is nothing there (or it cannot be read)."""
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):
        return None


def _resolved(path: Path) -> Path:
    """``path`` with its links followed, as far as they go (a loop of links is left as it is)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a loop of links, before Python 3.13
        return path.absolute()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _is_stream_of(stream: IO[Any], path: Path) -> bool:
    """Whether ``stream`` (stdin or stdout) is the file at ``path``."""
    try:
        return os.path.samestat(os.fstat(stream.fileno()), os.stat(path))
    except (OSError, ValueError):
        return False


def standard_stream(name: str) -> BinaryIO:
    """The binary stream under ``sys.stdin`` or ``sys.stdout``; an error if the process was started
    with it closed."""
    stream = getattr(sys, name)
    if stream is None:
        raise BadInput(f"{name} is closed")
    return stream.buffer


def stdin_or(source: str) -> str | BinaryIO:
    """``source``, or stdin's binary stream for ``-``."""
    return standard_stream("stdin") if source == "-" else source


def read_vqz_input(source: str) -> bytes:
    """The bytes of the .vqz file ``source``, or of stdin for ``-``, read no further than the file
    declares (``fileinfo.read_vqz``): a large input that is not a .vqz file is refused at once."""
    from vqcodec.fileinfo import read_vqz

    if not source:
        raise BadInput("IN is an empty path")
    return read_vqz(stdin_or(source))


def write_output(target: str, data: bytes) -> None:
    """Write ``data`` to stdout, to a pipe or character device in place (``is_special``), or else
    through a temporary file in the same folder, synced, then renamed over the output: an error, a
    crash or a signal never leaves a partial output. A file replaced (--force) keeps its permissions
    and, where allowed, its owner; a block device or socket is refused."""
    if target == "-":
        stream = standard_stream("stdout")
        try:
            _write_all(stream, data)
            stream.flush()
        except OSError as error:
            raise _naming(error, "stdout") from error
        return
    out, mode = Path(target), _mode(Path(target))
    in_place = _streams(mode)
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or in_place):
        raise OutputError(f"{target} is neither a file, a pipe nor a character device: not written")
    if in_place:
        try:
            with open(out, "wb") as stream:
                if stream.isatty():
                    raise click.UsageError(f"refusing to write binary data to a terminal ({target})")
                _write_all(stream, data)
        except OSError as error:
            raise _naming(error, target) from error
        return
    try:
        replaced = os.stat(out, follow_symlinks=False)
    except OSError:
        replaced = None
    try:  # a short name of its own: OUT's name and more could pass the file system's limit
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".vqcodec-", suffix=".tmp")
    except OSError as error:
        raise _naming(error, target) from error
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replaced is not None and stat.S_ISREG(replaced.st_mode):
            os.chmod(tmp, stat.S_IMODE(replaced.st_mode) & 0o777)
            if hasattr(os, "chown"):  # not on Windows
                with contextlib.suppress(OSError):  # only the owner's group, or root, may give it back
                    os.chown(tmp, replaced.st_uid, replaced.st_gid)
        else:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the output private
        os.replace(tmp, out)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(error, target) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_all(stream: BinaryIO, data: bytes) -> None:
    """Write all of ``data``: into a pipe whose reader went away, a write may write part of it and
    return the count without an error, which the next one raises (``BrokenPipeError``)."""
    view = memoryview(data)
    while view:
        written = stream.write(view)
        if not written:
            raise BrokenPipeError("nothing written")
        view = view[written:]


def _naming(error: OSError, target: str) -> OSError | OutputError:
    """``error`` as an error of the output ``target`` (not of the hidden temporary file it was written
    through, nor of the input); a closed pipe stays one (quietly, ``cli_errors.output_failed``)."""
    if isinstance(error, BrokenPipeError):
        return error
    return OutputError(f"{target}: {error.strerror or error}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def progress_bar(description: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar over wavefront steps on an interactive terminal; no output otherwise."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(desc=description, unit="step", leave=False, dynamic_ncols=True) as bar:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield update


@contextlib.contextmanager
def codec_warnings(quiet: bool = False, source: str | None = None) -> Iterator[None]:
    """Show the codec's own warnings as ``vqcodec: warning:`` lines (unless quiet), naming ``source``
    if given (one of several inputs), and no others: torch's and other libraries' warnings are not the
    user's business."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in caught:
                if not quiet and Path(warning.filename).resolve().is_relative_to(_PACKAGE_DIR):
                    about = "" if source is None else f"{source}: "
                    click.echo(f"vqcodec: warning: {about}{warning.message}", err=True)


@dataclass(frozen=True)
class Output:
    """How much a command says: ``quiet`` nothing but errors, ``verbose`` a summary even off a terminal."""

    quiet: bool
    verbose: bool

    @property
    def summaries(self) -> bool:
        return not self.quiet and (self.verbose or sys.stderr.isatty())

    def say(self, line: str) -> None:
        if self.summaries:
            click.echo(line, err=True)


@contextlib.contextmanager
def _naming_the_input(job: Job, single: bool) -> Iterator[None]:
    """``errors()``, each message starting with the input it is about (stdin for ``-``); for a
    ``single`` input, only its input's errors (not the output's, not the model's)."""
    only = BadInput if single else CommandError
    try:
        with errors():
            yield
    except only as error:
        message, source = error.format_message(), "stdin" if job.source == "-" else job.source
        if message.startswith(f"{source}:") or (single and isinstance(error, OutputError)):
            raise
        raise type(error)(f"{source}: {message}") from error.__cause__


def run_jobs(jobs: list[Job], work: Callable[[Job], str], output: Output, verb: str) -> None:
    """Do every job, each inside its own error report; with several, carry on past failures, sum up at
    the end and exit with the first failure's status."""
    if len(jobs) == 1:
        with _naming_the_input(jobs[0], single=True), codec_warnings(output.quiet):
            output.say(work(jobs[0]))
        return
    failed: list[int] = []
    for job in jobs:
        try:
            with _naming_the_input(job, single=False), codec_warnings(output.quiet, job.source):
                output.say(work(job))
        except CommandError as error:
            error.show()
            failed.append(error.exit_code)
    if not output.quiet:
        done = len(jobs) - len(failed)
        click.echo(f"vqcodec: {done} of {len(jobs)} files {verb}, {len(failed)} failed", err=True)
    if failed:
        sys.exit(failed[0])
