"""Collects one row per architecture and entry point; ``REGIONC_ZOO_TABLE=path`` writes them as a table."""

from __future__ import annotations

import os

import pytest

ROWS: list[dict] = []


@pytest.fixture(scope="session")
def zoo_rows():
    yield ROWS
    path = os.environ.get("REGIONC_ZOO_TABLE")
    if path and ROWS:
        from tests.zoo.table import write_table

        write_table(ROWS, path)
