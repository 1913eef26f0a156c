"""Fixed-size pages in one file: two meta pages, a free list and a cache; knows nothing of keys.

Layout: pages 0 and 1 are meta pages; every other page belongs to the tree above, to a free-list
page, or is free. Every page carries a checksum that covers its page number, so a page read from
the wrong place (or a misdirected write) is detected.

Updates are copy-on-write and committed in two steps (:meth:`Pager.commit`): new pages and the
free list are written and fsynced, then the meta page of transaction ``txn`` is written into slot
``txn % 2`` and fsynced. A crash at any point leaves the last committed meta page and everything
it reaches intact. Pages freed by a transaction are only reused by the one after it, so the
previous transaction's tree also stays intact while a new one is being written.

Space comes back: a transaction takes the lowest free pages first, and free pages at the end of
the file leave it at the next commit (the meta page no longer counts them; once it is durable
the file is cut, ``ftruncate``). Neither meta page reaches them then, so an older meta page
that still counts them is not damage.

The cache holds decoded nodes (whatever the layer above decodes a page into), keyed by page
number, within a budget in bytes of memory: each node says what it costs (its ``cost``, an
estimate made by the layer above when it decodes the page, since a decoded node takes several
times its page's size). Past the budget the oldest nodes go until half of it is left (a hit costs
one dict lookup and no bookkeeping, which matters more in Python than the better hit rate of
LRU). Not thread-safe, but for this: while one thread builds a transaction, others may read the
committed tree (its pages are not touched, and the cache stays right; see ``Partition.merge``).
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any, Protocol

from halodb import format as fmt
from halodb.errors import CorruptionError, InternalError, OperationalError
from halodb.vfs import File, FileSystem

log = logging.getLogger(__name__)

META_PAGES = 2
MAX_HEIGHT = 64
"""The tallest tree a meta page may describe (a real one stays far below: every level
multiplies the leaves by the fanout)."""
MAX_COUNTER = 1 << 62
"""``txn`` and ``flushed_seq`` stay below this: one per flush, or per write, can never get
there, so a meta page that says otherwise is damaged (and the next commit could not write
``txn + 1`` as a u64)."""
MIN_ENTRY = 5
"""The fewest bytes a leaf entry takes (``docs/format.md``, "Leaf page"): its flag, its key
end and its value end, with an empty key and value."""
MIN_CACHE_PAGES = 16
"""The node cache's budget is at least this many pages' worth of bytes."""
DIRTY_BYTES = 8 << 20
"""How many bytes of written pages a transaction buffers before handing them to the OS."""
_HEADER = fmt.PAGE_HEADER


@dataclass(frozen=True, slots=True)
class Meta:
    """One committed state of the tree file."""

    txn: int
    root: int
    root_crc: int
    height: int
    """Levels in the tree; 0 for an empty tree, 1 when the root is a leaf."""
    page_count: int
    """Pages in use in the file, including the meta pages; pages past it are garbage."""
    free_head: int
    free_head_crc: int
    free_count: int
    flushed_seq: int
    """The newest sequence number whose write the tree holds."""
    key_count: int


class Cached(Protocol):
    """What the node cache holds: a decoded node that knows its size in memory."""

    @property
    def cost(self) -> int:
        """Bytes of memory the node takes, its cache entry included (an estimate that must not
        fall short: the cache's budget is only as good as it)."""
        ...


@dataclass(slots=True)
class PagerStats:
    """Counters of one pager."""

    cache_hits: int = 0
    cache_misses: int = 0


def _meta_bytes(meta: Meta, partition: int, page_size: int, slot: int) -> bytes:
    body = fmt.META.pack(
        fmt.TREE_MAGIC,
        fmt.FORMAT_VERSION,
        partition,
        page_size,
        meta.txn,
        meta.root,
        meta.root_crc,
        meta.height,
        0,
        meta.page_count,
        meta.free_head,
        meta.free_head_crc,
        meta.free_count,
        meta.flushed_seq,
        meta.key_count,
        0,
    )[:-4]
    page = body + fmt.U32.pack(fmt.page_crc(slot, body))
    return page + bytes(page_size - len(page))


def new_tree_file(partition: int, page_size: int) -> bytes:
    """The bytes of an empty tree file: two meta pages of an empty tree."""
    meta = Meta(0, 0, 0, 0, META_PAGES, 0, 0, 0, 0, 0)
    return _meta_bytes(meta, partition, page_size, 0) + _meta_bytes(
        replace(meta, txn=1), partition, page_size, 1
    )


class Pager:
    """Pages of one partition's tree file, with copy-on-write commits and a node cache."""

    def __init__(
        self,
        fs: FileSystem,
        path: str,
        partition: int,
        page_size: int,
        cache_pages: int,
        readonly: bool,
    ) -> None:
        self.path = path
        self.partition = partition
        self.page_size = page_size
        self.readonly = readonly
        self.dirty: dict[int, bytes] = {}
        """Pages written by the transaction being built and not yet handed to the OS: they go
        out at commit (or every ``dirty_limit`` pages), runs of consecutive pages in one write."""
        self.dirty_limit = max(16, DIRTY_BYTES // page_size)
        self.file: File = fs.open(path, write=not readonly)
        self.cache: dict[int, Any] = {}
        """Decoded nodes by page number (each a :class:`Cached`), oldest first."""
        self.cache_budget = max(cache_pages, MIN_CACHE_PAGES) * page_size
        """Bytes of memory the cached nodes may take (``cache_pages`` pages' worth)."""
        self.cache_bytes = 0
        """Bytes of memory the cached nodes take: the sum of their ``cost``."""
        self.stats = PagerStats()
        try:
            self.meta = self.read_meta()
            self.free: list[int] = []
            """Pages free to use in the transaction being built."""
            self.freelist_pages: list[int] = []
            """Pages holding the committed free list (reachable from the committed meta)."""
            self._load_free_list()
        except BaseException:
            self.file.close()
            raise
        self.pending: list[int] = []
        """Pages the transaction being built stopped using; free from the next one on."""
        self._saved: tuple[list[int], int, list[int]] = ([], 0, [])
        self._committing = False
        self.spare = 0
        """Free pages the last commit left beyond as many as its transaction wrote: what a
        transaction like it would not reuse (none after a fill's merge, which frees about as
        many pages as it writes; many after deletes)."""
        self._allocated = 0
        """Pages the transaction being built took."""
        self.unsettled = False
        """An interrupted commit could not be settled from the file (see :meth:`abort`)."""

    # -- meta pages --------------------------------------------------------------------------

    def _parse_meta(self, page: bytes, slot: int) -> Meta | None:
        """The meta page in ``slot``, or ``None`` if its checksum fails (a torn write)."""
        fields = self._unpack_meta(page, slot)
        if fields is None:
            return None
        magic, version, partition, page_size, *state = fields
        where = f"{self.path} meta page {slot}"
        if magic != fmt.TREE_MAGIC:
            raise CorruptionError(f"{where}: not a HaloDB tree file")
        if not 1 <= version <= fmt.FORMAT_VERSION or partition != self.partition:
            raise CorruptionError(f"{where}: version {version} of partition {partition}")
        if page_size != self.page_size:
            raise CorruptionError(f"{where}: page size {page_size}, store says {self.page_size}")
        del state[4]  # the reserved field after the height
        meta = Meta(*state)
        self._check_meta(meta, where)
        return meta

    def _unpack_meta(self, page: bytes, slot: int) -> list[Any] | None:
        """The fields of the meta page in ``slot`` in ``fmt.META`` order, checksum left out,
        whichever layout it has; ``None`` if its checksum fails."""
        if len(page) < fmt.META.size:
            return None
        if page.startswith(fmt.TREE_MAGIC):  # version 2 and later: magic first, crc last
            size = fmt.META.size
            *fields, stored = fmt.META.unpack_from(page)
            if stored != fmt.page_crc(slot, page[: size - 4]):
                return None
            version = fields[1]
            if version < 2:
                raise CorruptionError(f"{self.path} meta page {slot}: version {version} layout")
        else:  # version 1: crc first
            size = fmt.META_V1.size
            stored, *fields = fmt.META_V1.unpack_from(page)
            if stored != fmt.page_crc(slot, page[4:size]):
                return None
            version = fields[1]
            if version != 1:
                raise CorruptionError(f"{self.path} meta page {slot}: version {version} layout")
        return fields

    def _check_meta(self, meta: Meta, where: str) -> None:
        """Raise :class:`CorruptionError` unless ``meta``'s counts and page numbers are
        possible in this file: its pages in use, root, free list, counters and key count."""
        page_size = self.page_size
        page_count, root, height = meta.page_count, meta.root, meta.height
        free_head, free_count = meta.free_head, meta.free_count
        if page_count < META_PAGES:  # (the file's size bounds the current one: read_meta)
            raise CorruptionError(f"{where}: {page_count} pages in use")
        if (
            height > min(MAX_HEIGHT, page_count - META_PAGES)
            or (height == 0) != (root == 0)
            or (root and not META_PAGES <= root < page_count)
        ):
            raise CorruptionError(f"{where}: impossible root {root} at height {height}")
        # The free pages, the free-list pages that list them and the (at least height) tree
        # nodes are distinct pages in use.
        free_list_pages = -(-free_count // ((page_size - _HEADER.size) // 4))
        if free_count + free_list_pages + height > page_count - META_PAGES or (
            free_head and not META_PAGES <= free_head < page_count
        ):
            raise CorruptionError(f"{where}: impossible free list {free_head}/{free_count}")
        if meta.txn >= MAX_COUNTER or meta.flushed_seq >= MAX_COUNTER:
            raise CorruptionError(
                f"{where}: impossible txn {meta.txn} or flushed_seq {meta.flushed_seq}"
            )
        # Every key is an entry of a leaf (n >= 1 entries: a non-empty tree holds a key); a
        # leaf holds at most usable // MIN_ENTRY of them (and at most the u16 count); the
        # leaves are among the pages in use that are neither free nor one of the (at least
        # height - 1) internal nodes. (check() verifies this page accounting exactly.)
        per_leaf = min((page_size - _HEADER.size) // MIN_ENTRY, 0xFFFF)
        leaf_pages = page_count - META_PAGES - free_count - free_list_pages - (height - 1)
        most = 0 if height == 0 else leaf_pages * per_leaf
        if meta.key_count > most or (height and not meta.key_count):
            raise CorruptionError(
                f"{where}: {meta.key_count} keys in a tree of height {height} and "
                f"{page_count} pages"
            )

    def most_keys(self) -> int:
        """The most keys the tree file's pages could hold as leaf entries (every page but the
        meta pages a full leaf)."""
        per_leaf = min((self.page_size - _HEADER.size) // MIN_ENTRY, 0xFFFF)
        return (self.meta.page_count - META_PAGES) * per_leaf

    def read_meta(self) -> Meta:
        first = self.file.read_at(0, self.page_size)
        second = self.file.read_at(self.page_size, self.page_size)
        metas = [m for m in (self._parse_meta(first, 0), self._parse_meta(second, 1)) if m]
        if not metas:
            raise CorruptionError(f"{self.path}: both meta pages are damaged")
        newest = max(metas, key=lambda m: m.txn)
        # (Only the newest must fit in the file: the older one may count pages a later commit
        # cut from its end, which it does not reach.)
        file_pages = self.file.size() // self.page_size
        if newest.page_count > file_pages:
            raise CorruptionError(
                f"{self.path} meta page {newest.txn % 2}: {newest.page_count} pages in use but "
                f"the file holds {file_pages}"
            )
        return newest

    # -- pages -------------------------------------------------------------------------------

    @property
    def next_page(self) -> int:
        """Pages in use, including those of the transaction being built: every valid page
        number is below it."""
        return self._next_page

    def read_page(self, page_no: int, expected_crc: int | None, what: str) -> bytes:
        """Read and verify a page; ``expected_crc`` is the checksum its referrer recorded."""
        if not META_PAGES <= page_no < self._next_page:
            raise CorruptionError(
                f"{self.path}: {what} page number {page_no} is outside the file "
                f"(pages in use: {self._next_page})"
            )
        size = self.page_size
        page = self.dirty.get(page_no) or self.file.read_at(page_no * size, size)
        if len(page) != size:
            raise CorruptionError(f"{self.path}: {what} page {page_no} is cut short")
        (stored,) = fmt.U32.unpack_from(page)
        if stored != fmt.page_crc(page_no, memoryview(page)[4:]):
            raise CorruptionError(f"{self.path}: {what} page {page_no} checksum mismatch")
        if expected_crc is not None and stored != expected_crc:
            raise CorruptionError(
                f"{self.path}: {what} page {page_no} is not the version its parent refers to "
                "(a stale or misplaced page)"
            )
        return page

    def write_page(self, page_no: int, body: bytes | bytearray) -> int:
        """Write a page (``body``: everything after the checksum) and return its checksum.

        The page is buffered (see ``dirty``); reads see it at once. Does not fsync:
        :meth:`commit` does.
        """
        size = self.page_size
        if len(body) < size - 4:
            body = bytes(body) + bytes(size - 4 - len(body))
        checksum = fmt.page_crc(page_no, body)
        if len(body) != size - 4:
            raise InternalError(
                f"{self.path}: page {page_no} body is {len(body)} bytes, a page holds {size - 4}"
            )
        self.dirty[page_no] = fmt.U32.pack(checksum) + bytes(body)
        if len(self.dirty) >= self.dirty_limit:
            self._write_dirty()
        return checksum

    def _write_dirty(self) -> None:
        """Write the buffered pages, each run of consecutive page numbers in one write."""
        dirty = self.dirty
        if not dirty:
            return
        size = self.page_size
        order = sorted(dirty)
        start = 0
        for i in range(1, len(order) + 1):
            if i == len(order) or order[i] != order[i - 1] + 1:
                first = order[start]
                self.file.write_at(first * size, b"".join(map(dirty.__getitem__, order[start:i])))
                start = i
        self.dirty = {}

    def begin(self) -> None:
        """Start building a transaction: remember the allocation state, for :meth:`abort`. Its
        pages are taken lowest first (so the end of the file empties, and can be cut)."""
        self.free.sort(reverse=True)
        self._saved = (list(self.free), self._next_page, list(self.freelist_pages))
        self.pending = []
        self.dirty = {}
        self._allocated = 0

    def abort(self) -> None:
        """Forget the transaction being built (after an error or interrupt part-way): the
        allocation state is back as :meth:`begin` found it, and the cache is emptied (it may
        hold nodes of pages the transaction wrote). The committed tree was never touched.

        Interrupted while its meta page was being written, the transaction may or may not be
        committed: the state is then read back from the file, which decides. Never raises:
        if that too fails (the error that got us here may be a failing disk), the committed
        tree stays the one in memory, whose pages the transaction did not touch, and
        ``unsettled`` tells the owner that the file may hold the other one: it must write
        nothing more."""
        self.pending = []
        self._forget_cache()
        self.dirty = {}
        saved_meta = self.meta
        saved_free, saved_next, saved_freelist = self._saved
        if self._committing:
            self._committing = False
            with suppress(OperationalError):
                self.file.sync()  # whichever meta page the OS holds now is the one on disk
            try:
                self.meta = self.read_meta()
                self.freelist_pages = []
                self._load_free_list()
                return
            except (OperationalError, CorruptionError):
                self.meta = saved_meta
                self.unsettled = True
        self.free, self._next_page, self.freelist_pages = saved_free, saved_next, saved_freelist

    def allocate(self) -> int:
        """A page number for the transaction being built: the lowest free page (see
        :meth:`begin`), or a new one."""
        self._allocated += 1
        if self.free:
            return self.free.pop()
        page_no = self._next_page
        self._next_page += 1
        return page_no

    def release(self, page_no: int) -> None:
        """The transaction being built no longer uses ``page_no``; reusable from the next one."""
        self.pending.append(page_no)
        node = self.cache.pop(page_no, None)
        if node is not None:
            self.cache_bytes -= node.cost

    def release_all(self) -> None:
        """The transaction being built uses no page of the committed one: every page that is
        not free already becomes pending (reusable from the next transaction on)."""
        free = set(self.free)
        self.pending = [p for p in range(META_PAGES, self._next_page) if p not in free]
        self.freelist_pages = []  # now among the pending pages
        self._forget_cache()

    # -- cache -------------------------------------------------------------------------------

    def remember(self, page_no: int, node: Cached) -> None:
        """Put a decoded node in the cache; past the budget, the oldest nodes are dropped at once
        until at most half of it is left (O(1) amortised, where evicting one entry at a time
        from the front of a dict is not), so a node costing more than that goes too."""
        cache = self.cache
        old = cache.pop(page_no, None)
        if old is not None:
            self.cache_bytes -= old.cost
        cache[page_no] = node
        self.cache_bytes += node.cost
        if self.cache_bytes > self.cache_budget:
            self._shrink_cache()

    def _shrink_cache(self) -> None:
        # A merge in the background and a reader under the partition's lock may both change
        # the cache: its nodes are looked at in copies made in one step (no Python code runs
        # inside list() or dict() of a dict), and their bytes recounted rather than counted
        # down, which could drift.
        nodes = list(self.cache.items())
        excess = self.cache_bytes - self.cache_budget // 2
        dropped = 0
        count = 0
        for _, node in nodes:
            if dropped >= excess:
                break
            dropped += node.cost
            count += 1
        kept = dict(nodes[count:])
        total = sum(node.cost for _, node in nodes[count:])
        self.cache = kept
        self.cache_bytes = total

    def _forget_cache(self) -> None:
        self.cache = {}
        self.cache_bytes = 0

    # -- free list and commit ----------------------------------------------------------------

    def _load_free_list(self) -> None:
        meta = self.meta
        self._next_page = meta.page_count
        page_no, expected = meta.free_head, meta.free_head_crc
        seen: set[int] = set()
        free: list[int] = []
        while page_no:
            if page_no in seen:
                raise CorruptionError(f"{self.path}: the free list loops (page {page_no})")
            seen.add(page_no)
            page = self.read_page(page_no, expected, "free-list")
            _, ptype, _, count, nxt, nxt_crc = _HEADER.unpack_from(page)
            if ptype != fmt.PAGE_FREELIST or _HEADER.size + count * 4 > self.page_size:
                raise CorruptionError(f"{self.path}: page {page_no} is not a free-list page")
            entries = fmt.u32_array(count).unpack_from(page, _HEADER.size) if count else ()
            for entry in entries:
                if not META_PAGES <= entry < meta.page_count:
                    raise CorruptionError(
                        f"{self.path}: free-list page {page_no} lists page {entry}, "
                        f"outside the file"
                    )
            free.extend(entries)
            if len(free) > meta.free_count:  # (a chain of distinct pages stops here too)
                raise CorruptionError(
                    f"{self.path}: free list holds more than the {meta.free_count} pages "
                    "the meta page says"
                )
            self.freelist_pages.append(page_no)
            page_no, expected = nxt, nxt_crc
        if len(free) != meta.free_count:
            raise CorruptionError(
                f"{self.path}: free list holds {len(free)} pages, meta page says {meta.free_count}"
            )
        if len(set(free)) != len(free) or set(free) & set(self.freelist_pages):
            raise CorruptionError(f"{self.path}: free list names a page twice")
        self.free = free

    def commit(
        self, *, root: int, root_crc: int, height: int, flushed_seq: int, key_count: int
    ) -> None:
        """Make the transaction being built durable and current.

        Writes the free list, fsyncs the file, writes the next meta page and fsyncs again.
        Refuses (``CorruptionError``, before writing anything) a ``txn`` or ``flushed_seq``
        the next open would refuse, and a page freed twice: both come of damage (a sequence
        number from a damaged log, a page the tree reaches twice), and committing them would
        spread it.
        """
        if self.meta.txn + 1 >= MAX_COUNTER or flushed_seq >= MAX_COUNTER:
            raise CorruptionError(
                f"{self.path}: txn {self.meta.txn + 1} or flushed_seq {flushed_seq} is "
                f"impossible (at least 2^62): damaged sequence numbers"
            )
        pending = self.pending + self.freelist_pages
        if len(set(pending).union(self.free)) != len(pending) + len(self.free):
            raise CorruptionError(
                f"{self.path}: a page would be freed twice (the tree reaches a page twice)"
            )
        per_page = (self.page_size - _HEADER.size) // 4
        self._cut_tail(per_page)
        pending = self.pending + self.freelist_pages
        self.free.sort(reverse=True)  # the free list, too, takes the lowest pages
        fl_pages: list[int] = []
        while len(fl_pages) < -(-(len(self.free) + len(pending)) // per_page):
            fl_pages.append(self.allocate())
        entries = self.free + pending
        head, head_crc = 0, 0
        for i in range(len(fl_pages) - 1, -1, -1):
            chunk = entries[i * per_page : (i + 1) * per_page]
            body = _HEADER.pack(0, fmt.PAGE_FREELIST, 0, len(chunk), head, head_crc)[4:]
            body += fmt.u32_array(len(chunk)).pack(*chunk)
            head, head_crc = fl_pages[i], self.write_page(fl_pages[i], body)
        self._write_dirty()
        self.file.sync()
        meta = Meta(
            self.meta.txn + 1,
            root,
            root_crc,
            height,
            self._next_page,
            head,
            head_crc,
            len(entries),
            flushed_seq,
            key_count,
        )
        slot = meta.txn % 2
        self._committing = True  # from here on, only the disk knows which meta is current
        self.file.write_at(
            slot * self.page_size, _meta_bytes(meta, self.partition, self.page_size, slot)
        )
        self.file.sync()
        self.meta = meta
        self.free = entries
        self.spare = max(0, len(entries) - self._allocated)
        self.pending = []
        self.freelist_pages = fl_pages
        self._committing = False
        if self.file.size() > meta.page_count * self.page_size:
            # Only now that the meta page that stops counting them is durable. (Not fsynced:
            # after a power cut the file may keep its old length, whose end no page reaches.)
            # A failure is an I/O error like any other, reported; the commit stands, and
            # abort() goes back to it.
            self._saved = (list(self.free), self._next_page, list(self.freelist_pages))
            self.file.truncate(meta.page_count * self.page_size)

    def give_back(self) -> int:
        """Hand the blocks of the committed free pages back to the file system (they read as
        zeros from then on: nothing reads a free page); the file keeps its size. Once the
        meta page that lists them free is durable: the older meta page's tree may still reach
        some, but it is read only if the newest is damaged, and then as damage. Returns the
        pages given back; best effort (an error is logged: nothing is lost, the space stays)."""
        if self.readonly or self.unsettled or not self.free:
            return 0
        size = self.page_size
        pages = sorted(self.free)
        given = 0
        start = 0
        try:
            for i in range(1, len(pages) + 1):
                if i == len(pages) or pages[i] != pages[i - 1] + 1:
                    if not self.file.punch(pages[start] * size, (i - start) * size):
                        return given
                    given += i - start
                    start = i
        except OperationalError as exc:
            log.warning("%s", exc)
        return given

    def _cut_tail(self, per_page: int) -> None:
        """The pages at the end of the file that no tree reaches leave the free list and the
        pages in use: free pages (free since an earlier transaction: neither meta page's tree
        reaches them), and the pages of the committed free list too (read only on open, and
        not again once the new meta page is durable), if the new free list fits in the free
        pages below them (so that this commit writes none of them: until its meta page is
        durable, the committed free list is still the one an open would read)."""
        if not self.free:
            return
        end = self._next_page
        free = set(self.free)
        while end - 1 in free:
            end -= 1
        further = end
        spare = free.union(self.freelist_pages)
        while further - 1 in spare:
            further -= 1
        if further < end:
            below = sum(1 for page in self.free if page < further)
            listed = below + len(self.pending) + sum(p < further for p in self.freelist_pages)
            if below >= -(-listed // per_page):
                end = further
        if end < self._next_page:
            self.free = [page for page in self.free if page < end]
            self.freelist_pages = [page for page in self.freelist_pages if page < end]
            self._next_page = end

    def close(self) -> None:
        """Close the file; idempotent."""
        self._forget_cache()
        self.file.close()
