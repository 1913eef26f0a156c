"""``python -m halodb``: the same program as the ``halodb`` command."""

from halodb.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
