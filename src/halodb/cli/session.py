"""The store a ``halodb`` command works on: its path, opening it with the right value codec,
read-only for reads, the shell's open store and batch and its read-only fallback; it must not
know which commands exist or how they show their results.

Value codecs: a store opens whatever codec wrote it (the name in its manifest, read by
:func:`halodb.codec_name`), through :class:`StoreCodec`; the commands that read no values never
decode one, and those that do use the default codec only for a store that uses it, any other
only when ``--codec`` names it (pickle runs code from the store's files when it decodes).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, Final

import typer

import halodb
from halodb.cli.literals import bounds
from halodb.cli.render import plural
from halodb.cli.status import EXIT_STORE, EXIT_USAGE, CliError, error, guard, warn
from halodb.cli.terminal import Pager, ask_on_stderr, console

DEFAULT_PATH: Final = "./halodb-data"
DEFAULT_CODEC: Final = "halo1"
CODECS: Final[dict[str, Callable[[], halodb.ValueCodec]]] = {
    "halo1": halodb.DefaultCodec,
    "pickle": halodb.PickleCodec,
}
"""The value codecs ``--codec`` names. pickle is used only when named: unpickling runs code
from the store's files."""


class StoreCodec:
    """The value codec the command opens a store with: it bears the name recorded in the
    store's manifest, so that a store written with any codec opens, and it encodes and
    decodes with ``inner``, the codec chosen for the command (``--codec``, or the default
    codec for a store that uses it). Without one (a command that reads no values, or a store
    whose codec was not chosen) ``encode`` and ``decode`` raise ``InterfaceError`` with
    ``refusal``, which names the store's codec and ``--codec``. Commands that read only keys
    use ``Store.range_keys``, which decodes no value.
    """

    def __init__(self, name: str, inner: halodb.ValueCodec | None, refusal: str) -> None:
        self.name = name
        self.inner = inner
        self.refusal = refusal

    def encode(self, value: object) -> bytes:
        if self.inner is None:
            raise halodb.InterfaceError(self.refusal)
        return self.inner.encode(value)

    def decode(self, data: bytes) -> object:
        if self.inner is None:
            raise halodb.InterfaceError(self.refusal)
        return self.inner.decode(data)


def store_exists(path: str) -> bool:
    """Whether opening ``path`` could find something: anything but a missing or empty directory."""
    if not os.path.exists(path):
        return False
    return not (os.path.isdir(path) and not os.listdir(path))


class Session:
    """What a command works on: the store path and value codec, and in the shell the open
    store and batch.

    On the command line each command opens the store (read-only for reads, so that several
    readers can run together) and closes it. In the shell the store stays open, is created on
    the first write, and falls back to read-only when another process is reading it.

    Values are decoded with the codec ``codec`` names (``--codec``), or the default codec for
    a store that uses it; a store using another codec opens all the same for the commands
    that read no values (see :class:`StoreCodec`).
    """

    def __init__(
        self,
        path: str,
        *,
        in_shell: bool = False,
        ask: Callable[[str], str] | None = None,
        can_ask: bool | None = None,
        codec: str | None = None,
    ) -> None:
        self.path = path
        self.in_shell = in_shell
        self.ask = ask or (input if in_shell else ask_on_stderr)
        """Shows a question, returns the answer; ``EOFError`` at end of input."""
        self.can_ask = can_ask
        """Whether a question may be asked: ``None`` means when stdin is a terminal (never
        otherwise: the answer would be read from the data or the script piped in)."""
        self.codec_choice = codec
        """The codec named by ``--codec``, if any."""
        self.codec: StoreCodec | None = None
        """The codec the open store was opened with."""
        self.db: halodb.Store | None = None
        self.batch: halodb.Batch | None = None
        self.batch_note_shown = False

    # -- the value codec -------------------------------------------------------------------

    def _stored_codec(self) -> str | None:
        """The codec name in the store's manifest; ``None`` if there is no store there (yet):
        then opening it says what is wrong, or creates it."""
        try:
            return halodb.codec_name(self.path)
        except halodb.InterfaceError:
            return None

    def _codec_for(self, stored: str | None, *, values: bool = True) -> StoreCodec:
        """The codec to open the store with, whose codec is ``stored`` (``None``: a new
        store): decoding with the codec chosen, or the default one if the store uses it;
        without ``values``, none (the command reads no values)."""
        choice = self.codec_choice
        if choice is not None and stored is not None and choice != stored:
            raise CliError(
                EXIT_USAGE,
                f"{os.path.abspath(self.path)}: the store's values use the {stored!r} codec, "
                f"not {choice!r} (--codec {stored} reads them)",
            )
        name = stored or choice or DEFAULT_CODEC
        inner: halodb.ValueCodec | None = None
        if values and choice is not None:
            inner = CODECS[choice]()
        elif values and name == DEFAULT_CODEC:
            inner = halodb.DefaultCodec()
        return StoreCodec(name, inner, self._refusal(name))

    def _refusal(self, name: str) -> str:
        """Why values encoded with codec ``name`` are not read or written, and what to do."""
        where = os.path.abspath(self.path)
        if name == "pickle":
            how = (
                "start the shell with --codec pickle (halodb --codec pickle)"
                if self.in_shell
                else "add --codec pickle"
            )
            return (
                f"{where}: the store's values use the 'pickle' codec, which is used only when "
                f"asked for: to read or write values, {how}; unpickling runs code from the "
                "store's files, so do it only for a store you trust"
            )
        if name == DEFAULT_CODEC:
            return f"{where}: this command reads no values (a bug in HaloDB; please report it)"
        return (
            f"{where}: the store's values use the {name!r} codec, which the halodb command "
            f"does not know (--codec knows {', '.join(CODECS)}); open the store from Python "
            "with its codec to read or write values"
        )

    @staticmethod
    def _decoding(codec: StoreCodec) -> halodb.ValueCodec:
        if codec.inner is None:
            raise CliError(EXIT_USAGE, codec.refusal)
        return codec.inner

    def value_codec(self) -> halodb.ValueCodec:
        """The codec values are encoded with, for checking a value before the store opens;
        ``CliError`` if this store's values cannot be read or written (another codec)."""
        if self.in_shell and self.codec is not None:
            return self._decoding(self.codec)
        return self._decoding(self._codec_for(self._stored_codec()))

    # -- the store -------------------------------------------------------------------------

    @contextlib.contextmanager
    def store(
        self, *, write: bool, create: bool = True, values: bool
    ) -> Iterator[halodb.Store | None]:
        """The store, open for ``write`` or reading, and for ``values`` (the command reads or
        writes values: ``CliError`` if the store's codec was not chosen) or not (the store's
        values stay undecoded, whatever its codec). ``None`` when there is none yet and the
        command needs none: a read in the shell, or a write with ``create=False``.

        On the command line a read of a missing store raises (exit status 3): it never creates.
        """
        if self.in_shell:
            yield self._shell_store(write, create, values)
            return
        if write and not create and not store_exists(self.path):
            yield None
            return
        codec = self._codec_for(self._stored_codec(), values=values)
        if values:
            self._decoding(codec)
        db = halodb.open(self.path, readonly=not write, value_codec=codec)
        self.codec = codec
        try:
            yield db
        finally:
            self.codec = None
            db.close()

    def _shell_store(self, write: bool, create: bool, values: bool) -> halodb.Store | None:
        if self.db is None:
            if store_exists(self.path):
                self.open_existing()
            elif write and create:
                codec = self._codec_for(None)
                self.db = halodb.open(self.path, value_codec=codec)
                self.codec = codec
                self.info(f"created a new store at {self.db.path}")
            else:
                return None
        assert self.db is not None and self.codec is not None
        if write and self.db.readonly:
            raise CliError(
                EXIT_STORE,
                f"{self.db.path}: this shell has the store open read-only (another process was "
                "reading it when the shell opened it); close that one and restart the shell",
            )
        if values:
            self._decoding(self.codec)
        return self.db

    def open_existing(self) -> None:
        """Open the existing store for writing, or read-only if other processes are reading it."""
        codec = self._codec_for(self._stored_codec())
        try:
            self.db = halodb.open(self.path, create=False, value_codec=codec)
        except halodb.OperationalError:
            # raises if a writer holds it
            self.db = halodb.open(self.path, readonly=True, value_codec=codec)
            warn(f"{self.db.path}: another process is reading the store; this shell is read-only")
        self.codec = codec

    def scan(
        self,
        db: halodb.Store | None,
        prefix: str | None,
        start: str | None,
        stop: str | None,
        *,
        typed: bool,
        reverse: bool = False,
        limit: int | None = None,
        keys_only: bool = False,
    ) -> Iterator[Any]:
        """A range of the open store ``db`` (at most ``limit``) as ``(key, value)`` pairs, or
        with ``keys_only`` as keys read without decoding any value."""
        lo, hi, pre = bounds(prefix, start, stop, typed=typed)
        if db is None:
            return iter(())
        read = db.range_keys if keys_only else db.range
        return read(lo, hi, reverse=reverse, prefix=pre, limit=limit)

    def close(self) -> None:
        """Discard an open batch and close the store (which flushes it)."""
        if self.batch is not None:
            pending = len(self.batch)
            self.batch.discard()
            self.batch = None
            if pending:
                warn(f"discarded the uncommitted batch of {plural(pending, 'change')}")
        if self.db is not None:
            db, self.db = self.db, None
            self.codec = None
            db.close()

    # -- output ----------------------------------------------------------------------------

    def out(self, text: str) -> None:
        """A line of data, on stdout."""
        sys.stdout.write(text + "\n")

    def info(self, text: str) -> None:
        """A status line: on stdout in the shell, on stderr on the command line (stdout is data)."""
        if self.in_shell:
            sys.stdout.write(text + "\n")
        else:
            console(stderr=True).print(text, style="dim")

    def pager(self) -> Pager:
        return Pager(self.in_shell and sys.stdin.isatty() and sys.stdout.isatty())

    def may_ask(self) -> bool:
        """Whether a question can be asked: only on a terminal, so that a question never
        reads its answer from a script or data piped in."""
        return sys.stdin.isatty() if self.can_ask is None else self.can_ask

    def confirm(self, question: str) -> bool:
        """Ask a yes/no question; no by default and at end of input. Ctrl-C raises
        ``KeyboardInterrupt`` (the command ends with status 130). Callers check
        :meth:`may_ask` first."""
        try:
            answer = self.ask(f"{question} [y/N] ")
        except EOFError:
            # Ctrl-D leaves the cursor after the question
            (sys.stdout if self.in_shell else sys.stderr).write("\n")
            return False
        return answer.strip().lower() in ("y", "yes")

    def note_batch_reads(self) -> None:
        if self.batch is not None and not self.batch_note_shown:
            self.batch_note_shown = True
            self.info("(note: reads see the store, not the uncommitted batch)")

    # -- errors ----------------------------------------------------------------------------

    def guard(self) -> contextlib.AbstractContextManager[None]:
        """Turn every failure inside into one line on stderr and ``typer.Exit(status)``: the
        error policy of :func:`halodb.cli.status.guard`."""
        return guard()


def session_of(ctx: typer.Context, path: str | None = None, codec: str | None = None) -> Session:
    """The command's session, with the ``--path`` and ``--codec`` given after the command
    name (they override those given before it; the shell refuses them: it works on one store)."""
    obj = ctx.obj
    s = obj if isinstance(obj, Session) else Session(os.environ.get("HALODB_PATH") or DEFAULT_PATH)
    if path is None and codec is None:
        return s
    if s.in_shell:
        given = " and ".join(name for name, v in (("--path", path), ("--codec", codec)) if v)
        error(
            f"{given}: the shell works on one store ({os.path.abspath(s.path)}), chosen when "
            "it starts: halodb --path DIR --codec NAME"
        )
        raise typer.Exit(EXIT_USAGE)
    if path is not None:
        s.path = path
    if codec is not None:
        s.codec_choice = codec
    return s
