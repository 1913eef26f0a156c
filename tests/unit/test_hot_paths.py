"""Hot-path copies kept for speed agree with the code they copy.

``Store.__getitem__``, ``get`` and ``__setitem__`` inline the key encoding's and the default
codec's bytes cases; ``__contains__``, ``pop`` and ``Batch`` go through the general path
(``encode_key`` with the length check, the codec's ``encode``/``decode``). For any key and
value, both paths must give the same answers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import halodb

MISSING = object()

scalars = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=600),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True),
)
keys = st.one_of(scalars, st.tuples(scalars, scalars), st.tuples(st.text(max_size=3)))
values = st.one_of(
    st.binary(max_size=100),
    st.text(max_size=100),
    st.lists(st.integers(), max_size=3),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(keys, values), max_size=20), probes=st.lists(keys, max_size=20))
def test_the_inlined_lookups_agree_with_the_general_path(
    tmp_path_factory: Any, pairs: list[tuple[Any, Any]], probes: list[Any]
) -> None:
    path: Path = tmp_path_factory.mktemp("s")
    with halodb.open(path / "s", partitions=2, page_size=1024) as db:
        for key, value in pairs:
            try:
                db[key] = value  # the inlined put
            except halodb.DataError:
                with db.batch() as batch:  # the general path refuses it the same way
                    try:
                        batch[key] = value
                    except halodb.DataError:
                        continue
                    raise AssertionError(f"the batch took {key!r}, the put did not")
        for key in [*probes, *(key for key, _ in pairs)]:
            present = key in db  # the general path
            got = db.get(key, MISSING)  # the inlined path
            assert (got is not MISSING) == present, key
            try:
                item = db[key]
            except KeyError:
                assert not present, key
            else:
                assert present and item == got, key
            if present and not (isinstance(key, float) and math.isnan(key)):
                assert got == db.pop(key)  # the general decode
                db[key] = got
