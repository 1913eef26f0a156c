"""The byte-exact examples in ``docs/format.md`` are what the code writes.

Two kinds of examples are checked:

- every fenced block preceded by an ``<!-- example: NAME -->`` marker: hex bytes, two digits
  each, separated by blanks; ``#`` starts a comment that runs to the end of the line. Each NAME
  is produced here by the code (or read from a store the code just wrote) and compared byte
  for byte. Examples of a whole page show its first bytes only: the rest must be zero;
- the inline ``→`` examples of the key and value encodings (``\\`1\\` → \\`10 01 00 01 01\\```).

The set of examples is fixed below, so an example that is removed, renamed or made unparsable
fails too, not only one whose bytes are wrong.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import halodb
from halodb import format as fmt
from halodb import pager, wal
from halodb.engine import directory
from halodb.keys import decode_key, encode_key
from halodb.values import DefaultCodec

DOC = Path(__file__).resolve().parents[2] / "docs" / "format.md"

MARKER = re.compile(r"^<!-- example:", re.MULTILINE)
EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\n```\n(.*?)```", re.DOTALL)
HEX_BYTE = re.compile(r"[0-9A-Fa-f]{2}")
ARROW = re.compile(r"`([^`]+)` →\s+`([0-9A-Fa-f]{2}(?: [0-9A-Fa-f]{2})*)`")

KEY = encode_key("a")
VALUE = DefaultCodec().encode("b")
PAGE = 4096

PAGE_EXAMPLES = {"meta-new", "meta-after-flush", "leaf"}
"""Examples that show the start of a page: the rest of the page must be zero."""

KEY_EXAMPLES = {
    "0",
    "1",
    "256",
    "-1",
    "-256",
    "0.0",
    "1.0",
    "-1.0",
    '("a", b"\\x00", 1)',
    "((),)",
}
VALUE_EXAMPLES = {'b"a"', '"é"', '{"a": [1, None]}'}


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def parse_hex(block: str, name: str) -> bytes:
    out = bytearray()
    for line in block.splitlines():
        for token in line.split("#", 1)[0].split():
            assert HEX_BYTE.fullmatch(token), f"example {name}: {token!r} is not a hex byte"
            out.append(int(token, 16))
    return bytes(out)


def doc_examples() -> dict[str, bytes]:
    text = doc_text()
    found: dict[str, bytes] = {}
    for name, block in EXAMPLE.findall(text):
        assert name not in found, f"example {name} appears twice"
        found[name] = parse_hex(block, name)
    assert len(MARKER.findall(text)) == len(found), "an example marker without its hex block"
    return found


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


# ---------------------------------------------------------------------------------------------
# What the code writes, per example
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two new one-partition stores after ``db["a"] = "b"``: ``flushed`` then closed, and
    ``closed`` right away (which leaves the write in a run file)."""
    root = tmp_path_factory.mktemp("format-doc")
    for name in ("flushed", "closed"):
        with halodb.open(root / name, partitions=1, page_size=PAGE) as db:
            db["a"] = "b"
            if name == "flushed":
                db.flush()
    return root


def _put_record(_: Path) -> bytes:
    record = wal.frame_put(1, KEY, VALUE)
    # The one-step hot path writes exactly the bytes of the general framing.
    assert record == wal.frame(fmt.REC_WRITE, 1, wal.encode_put(KEY, VALUE))
    assert record == wal.frame(fmt.REC_WRITE, 1, wal.encode_entries(0, [(KEY, VALUE)]))
    return record


def _manifest(_: Path) -> bytes:
    manifest = directory.Manifest(
        partitions=4,
        page_size=4096,
        hash_seed=0x9E3779B9,
        created_ns=1_700_000_000_000_000_000,
        codec="halo1",
    )
    data = directory.manifest_bytes(manifest)
    assert directory.parse_manifest(data, "example") == manifest
    return data


def _tree_page(number: int) -> Callable[[Path], bytes]:
    def read(path: Path) -> bytes:
        data = (path / "flushed" / fmt.partition_file(0, "tree")).read_bytes()
        return data[number * PAGE : (number + 1) * PAGE]

    return read


PRODUCERS: dict[str, Callable[[Path], bytes]] = {
    "lock": lambda path: (path / "closed" / fmt.LOCK_NAME).read_bytes(),
    "manifest": _manifest,
    "wal-header": lambda _: wal.header_bytes(0, 0),
    "wal-put": _put_record,
    "wal-delete": lambda _: wal.frame(fmt.REC_WRITE, 2, wal.encode_entries(0, [(KEY, None)])),
    "wal-batch": lambda _: wal.frame(fmt.REC_BATCH, 5, wal.encode_batch([0, 1], 0, [(KEY, VALUE)])),
    "wal-clear": lambda _: wal.frame(
        fmt.REC_BATCH, 6, wal.encode_batch([0, 1], fmt.FLAG_CLEAR, [])
    ),
    "wal-close": lambda _: wal.frame(fmt.REC_CLOSE, 3, b""),
    "wal-after-close": lambda path: (path / "closed" / fmt.partition_file(0, "wal")).read_bytes(),
    "run": lambda path: (path / "closed" / fmt.partition_file(0, "run")).read_bytes(),
    "meta-new": lambda _: pager.new_tree_file(0, PAGE)[:PAGE],
    "meta-after-flush": _tree_page(0),
    "leaf": _tree_page(2),
}


def test_the_doc_has_exactly_the_known_examples() -> None:
    assert set(doc_examples()) == set(PRODUCERS)


@pytest.mark.parametrize("name", sorted(PRODUCERS))
def test_example_is_what_the_code_writes(name: str, store: Path) -> None:
    documented = doc_examples()[name]
    actual = PRODUCERS[name](store)
    if name in PAGE_EXAMPLES:
        assert len(actual) == PAGE
        assert actual[: len(documented)].hex(" ") == documented.hex(" ")
        assert not actual[len(documented) :].strip(b"\x00"), f"{name}: the rest is not zero"
    else:
        assert actual.hex(" ") == documented.hex(" ")


def test_the_log_examples_read_back_as_one_log() -> None:
    examples = doc_examples()
    log = b"".join(examples[name] for name in ("wal-header", "wal-put", "wal-delete", "wal-close"))
    contents = wal.read_log(log, 0, "example")
    assert not contents.torn
    assert contents.valid_end == len(log)
    got = [(r.rtype, r.seq, r.flags, r.entries) for r in contents.records]
    assert got == [
        (fmt.REC_WRITE, 1, 0, [(KEY, VALUE)]),
        (fmt.REC_WRITE, 2, 0, [(KEY, None)]),
        (fmt.REC_CLOSE, 3, 0, []),
    ]
    after_close = wal.read_log(examples["wal-after-close"], 0, "example")
    assert after_close.base_seq == 1
    assert [(r.rtype, r.seq) for r in after_close.records] == [(fmt.REC_CLOSE, 2)]


def test_key_encoding_examples() -> None:
    pairs = ARROW.findall(section(doc_text(), "Key encoding"))
    assert {source for source, _ in pairs} == KEY_EXAMPLES
    for source, hex_bytes in pairs:
        key = ast.literal_eval(source)
        assert encode_key(key).hex(" ") == bytes.fromhex(hex_bytes).hex(" "), source
        decoded = decode_key(bytes.fromhex(hex_bytes))
        assert decoded == key
        assert type(decoded) is type(key)


def test_value_encoding_examples() -> None:
    codec = DefaultCodec()
    pairs = ARROW.findall(section(doc_text(), "Value encoding"))
    assert {source for source, _ in pairs} == VALUE_EXAMPLES
    for source, hex_bytes in pairs:
        value = ast.literal_eval(source)
        assert codec.encode(value).hex(" ") == bytes.fromhex(hex_bytes).hex(" "), source
        assert codec.decode(bytes.fromhex(hex_bytes)) == value
