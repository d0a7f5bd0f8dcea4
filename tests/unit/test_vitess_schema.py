"""The Vitess layout in docs/vitess/ stays true to the schema (``chat_common.schema.tables``) as the schema changes.

No Vitess can run here: these checks keep the documented VSchema consistent with the tables — every table placed,
every tenant table sharded by ``application_id`` with the same vindex as ``applications.id`` (a tenant's rows, and
the foreign keys between them, on one shard), every unique key either led by the sharding key or backed by a
unique lookup vindex, every sequence and lookup table declared and created.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy import UniqueConstraint

from chat_common.schema.tables import metadata

VITESS = Path(__file__).resolve().parents[2] / "docs" / "vitess"
SHARDED = json.loads((VITESS / "chat.vschema.json").read_text())
LOOKUP = json.loads((VITESS / "chat_lookup.vschema.json").read_text())
LOOKUP_SQL = (VITESS / "chat_lookup.sql").read_text()


def vindexes_of(table: str) -> dict[str, str]:
    """column -> vindex name, in the sharded keyspace."""
    return {v["column"]: v["name"] for v in SHARDED["tables"][table]["column_vindexes"]}


def test_every_table_is_placed_in_exactly_one_keyspace():
    placed = set(SHARDED["tables"]) | set(LOOKUP["tables"])
    assert set(metadata.tables) <= placed
    assert not set(SHARDED["tables"]) & set(LOOKUP["tables"])
    assert SHARDED["sharded"] is True and LOOKUP["sharded"] is False


def test_tenant_tables_share_the_applications_primary_vindex_on_application_id():
    primary = SHARDED["tables"]["applications"]["column_vindexes"][0]
    assert primary == {"column": "id", "name": "hash"}
    for name, table in metadata.tables.items():
        if "application_id" in table.c:
            assert SHARDED["tables"][name]["column_vindexes"][0] == {"column": "application_id", "name": "hash"}, name


def test_every_unique_key_is_led_by_the_sharding_key_or_backed_by_a_unique_lookup():
    for name in SHARDED["tables"]:
        table = metadata.tables[name]
        vindexes = vindexes_of(name)
        shard_column = SHARDED["tables"][name]["column_vindexes"][0]["column"]
        keys = [c for c in table.constraints if isinstance(c, UniqueConstraint)] + [table.primary_key]
        for key in keys:
            columns = [c.name for c in key.columns]
            if shard_column in columns or columns == ["id"]:  # ids come from a sequence: unique everywhere
                continue
            (column,) = columns
            vindex = SHARDED["vindexes"][vindexes[column]]
            assert vindex["type"] == "consistent_lookup_unique", f"{name}.{column} is unique only per shard"


def test_every_vindexed_column_exists_and_every_lookup_table_is_declared_and_created():
    for name, spec in SHARDED["tables"].items():
        for v in spec["column_vindexes"]:
            assert v["column"] in metadata.tables[name].c, f"{name}.{v['column']}"
    for vindex in SHARDED["vindexes"].values():
        if "params" in vindex:
            keyspace, table = vindex["params"]["table"].split(".")
            assert keyspace == "chat_lookup" and table in LOOKUP["tables"]
            assert re.search(rf"CREATE TABLE {table} \(\s*{vindex['params']['from']} ", LOOKUP_SQL), table


def test_every_auto_increment_id_has_its_sequence():
    for name, spec in SHARDED["tables"].items():
        id_column = metadata.tables[name].c.get("id")
        if id_column is not None and id_column.autoincrement is True:
            sequence = spec["auto_increment"]["sequence"].split(".")[1]
            assert LOOKUP["tables"][sequence] == {"type": "sequence"}, name
            assert f"CREATE TABLE {sequence} " in LOOKUP_SQL and "COMMENT 'vitess_sequence'" in LOOKUP_SQL
