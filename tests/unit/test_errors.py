"""Unit tests for halodb.errors: the PEP 249 hierarchy, and that every exception pickles."""

from __future__ import annotations

import pickle

import pytest

from halodb import errors
from halodb.errors import (
    CorruptionError,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)

ALL: list[type[Exception]] = [
    Error,
    InterfaceError,
    DatabaseError,
    DataError,
    OperationalError,
    IntegrityError,
    InternalError,
    ProgrammingError,
    NotSupportedError,
    CorruptionError,
]

PARENT: dict[type[Exception], type[Exception]] = {
    Error: Exception,
    InterfaceError: Error,
    DatabaseError: Error,
    DataError: DatabaseError,
    OperationalError: DatabaseError,
    IntegrityError: DatabaseError,
    InternalError: DatabaseError,
    ProgrammingError: DatabaseError,
    NotSupportedError: DatabaseError,
    CorruptionError: DatabaseError,
}


@pytest.mark.parametrize("cls", ALL)
def test_direct_parent_is_as_specified(cls: type[Exception]) -> None:
    assert cls.__bases__ == (PARENT[cls],)


def test_all_exports_every_exception() -> None:
    assert sorted(errors.__all__) == sorted(c.__name__ for c in ALL)


@pytest.mark.parametrize("cls", ALL)
def test_every_exception_has_a_docstring(cls: type[Exception]) -> None:
    assert cls.__doc__ and cls.__doc__.strip()


def test_interface_error_is_not_a_database_error() -> None:
    assert not issubclass(InterfaceError, DatabaseError)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("args", [(), ("msg",), ("file wal-0001.log, offset 42", 7)])
def test_pickle_round_trip(cls: type[Exception], args: tuple[object, ...]) -> None:
    exc = cls(*args)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(exc, protocol=protocol))
        assert type(back) is cls
        assert back.args == args
        assert str(back) == str(exc)


def test_corruption_error_carries_where_in_its_message() -> None:
    exc = CorruptionError("bad checksum in tree-0003.db at offset 8192")
    assert "offset 8192" in str(exc)
    with pytest.raises(DatabaseError, match="offset 8192"):
        raise exc


def test_wrapping_an_os_error_keeps_the_cause() -> None:
    with pytest.raises(OperationalError) as info:
        try:
            raise PermissionError(13, "Permission denied")
        except OSError as exc:
            raise OperationalError("cannot open store: permission denied") from exc
    assert isinstance(info.value.__cause__, PermissionError)
