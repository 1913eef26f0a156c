"""A small inventory: tuples as composite keys, range scans per category, atomic stock transfers.

Keys are tuples, so they sort field by field like Python tuples:

- ``("item", category, sku)`` -> ``{"name": ..., "price": ...}``: the catalogue;
- ``("stock", warehouse, sku)`` -> ``int``: units of a SKU in a warehouse;
- ``("move", n)`` -> ``{...}``: a journal of transfers.

A transfer changes two stock keys and appends to the journal in one batch: after a crash either
all three writes are there or none is.

Run: ``python examples/inventory.py [NEW_DIRECTORY]`` (default: a temporary directory).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading

import halodb

CATALOGUE = {
    ("tools", "T-100"): ("hammer", 12.5),
    ("tools", "T-150"): ("screwdriver", 4.0),
    ("tools", "T-200"): ("wrench", 9.9),
    ("garden", "G-010"): ("rake", 15.0),
    ("garden", "G-020"): ("hose", 22.0),
    ("kitchen", "K-001"): ("kettle", 30.0),
}
STOCK = {
    ("berlin", "T-100"): 40,
    ("berlin", "G-010"): 5,
    ("lisbon", "T-100"): 3,
    ("lisbon", "K-001"): 12,
}

# Reads inside a batch see the store, not the batch: a read-modify-write such as a transfer
# needs its own lock when several threads transfer at once.
_transfer_lock = threading.Lock()


def transfer(db: halodb.Store, sku: str, source: str, target: str, units: int) -> None:
    """Move ``units`` of ``sku`` from one warehouse to another, atomically."""
    with _transfer_lock:
        have = db.get(("stock", source, sku), 0)
        if have < units:
            raise ValueError(f"{source} has {have} x {sku}, cannot move {units}")
        last = next(db.range(prefix=("move",), reverse=True), None)  # the newest journal entry
        n = 1 if last is None else last[0][1] + 1
        with db.batch() as batch:
            batch[("stock", source, sku)] = have - units
            batch[("stock", target, sku)] = db.get(("stock", target, sku), 0) + units
            batch[("move", n)] = {"sku": sku, "from": source, "to": target, "units": units}


def show_stock(db: halodb.Store, warehouse: str) -> None:
    stock = {key[2]: units for key, units in db.range(prefix=("stock", warehouse))}
    print(f"stock in {warehouse}: {stock}")


def main() -> None:
    if len(sys.argv) > 1:
        path = sys.argv[1]
        if os.path.isdir(path) and os.listdir(path):
            sys.exit(f"{path} is not empty; give a new directory")
        tmp = None
    else:
        tmp = tempfile.TemporaryDirectory(prefix="halodb-inventory-")
        path = os.path.join(tmp.name, "store")

    with halodb.open(path) as db:
        db.update(  # one atomic batch
            {
                ("item", cat, sku): {"name": name, "price": price}
                for (cat, sku), (name, price) in CATALOGUE.items()
            }
        )
        db.update({("stock", wh, sku): units for (wh, sku), units in STOCK.items()})

        # A range scan per category: every key with the prefix ("item", category), in SKU order.
        for category in ("garden", "kitchen", "tools"):
            names = [value["name"] for _, value in db.range(prefix=("item", category))]
            print(f"{category}: {', '.join(names)}")
        # A half-open range inside a category: SKUs from T-100 up to, not including, T-200.
        tools = db.range(("item", "tools", "T-100"), ("item", "tools", "T-200"))
        skus = [key[2] for key, _ in tools]
        print("tools T-100 <= sku < T-200:", skus)

        transfer(db, "T-100", "berlin", "lisbon", 15)
        transfer(db, "K-001", "lisbon", "berlin", 2)
        try:
            transfer(db, "G-010", "berlin", "lisbon", 50)
        except ValueError as exc:
            print("refused:", exc)
        show_stock(db, "berlin")
        show_stock(db, "lisbon")
        total = sum(units for key, units in db.range(prefix=("stock",)) if key[2] == "T-100")
        print("total T-100 units:", total)
        print("journal:", [value for _, value in db.range(prefix=("move",))])
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
