"""Materialisation at the speed of the store, through Feast's own extension points.

Feast's stock materialisation (its LocalComputeEngine) turns every batch of rows into
protobufs, one ValueProto per feature value, and hands them to the online store's
`online_write_batch`, which on SQLite upserts one table row per feature value (35 a user)
and on Redis builds one HSET per user in redis-py: ~2,500 users/s on this project's
machine (docs/scaling.md). Three classes, each named in feature_store.yaml, replace those
steps and nothing else (the offline read, the time filter and the de-duplication stay
Feast's):

- `ArrowComputeEngine` (`batch_engine`): Feast's LocalComputeEngine whose output node
  hands each batch to the online store as Arrow when the store takes Arrow
  (`online_write_arrow`), and as Feast's protobufs otherwise.
- `BulkSqliteOnlineStore` (`online_store`): Feast's SqliteOnlineStore keeping one row per
  entity and view, the values one serialised `RepeatedValue`, instead of one row per
  value. SQLite's per-row cost is the limit: a bare executemany into Feast's layout ran
  at ~4,000-5,000 users/s here, this layout at ~100,000. Reads return the same
  ValueProtos. Until a view's first bulk materialisation (a store Feast's own SQLite
  store wrote), reads and pushes use Feast's table, so an upgrade reads what is there.
- `BulkRedisOnlineStore`: Feast's RedisOnlineStore, the same keys, hash fields, bytes and
  expiry, the commands of a whole batch packed with numpy and sent in one write.

Every value is written as Feast writes it: nulls and NaNs as empty values, timestamps
through the same conversions. Values the vectorised path does not encode (a feature
that is not a float, a missing timestamp) go through Feast's own conversion instead,
as do Redis setups other than one plain server without timestamp checks.
tests/test_feature_store.py reads both writes back through `get_online_features`.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from feast import Entity, FeatureView, RepoConfig
from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.compute_engines.dag.context import ExecutionContext
from feast.infra.compute_engines.local.arrow_table_value import ArrowTableValue
from feast.infra.compute_engines.local.compute import LocalComputeEngine
from feast.infra.compute_engines.local.feature_builder import LocalFeatureBuilder
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.compute_engines.local.nodes import LocalOutputNode
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import (
    RedisOnlineStore,
    RedisOnlineStoreConfig,
    RedisType,
    _versioned_fv_name,
)
from feast.infra.online_stores.sqlite import (
    SqliteOnlineStore,
    SqliteOnlineStoreConfig,
    _quote_id,
    _table_id,
)
from feast.infra.registry.base_registry import BaseRegistry
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import RepeatedValue
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel
from feast.types import Float32, Float64
from feast.utils import (
    _build_entity_keys,
    _coerce_datetime,
    _columns_to_proto_values,
    _convert_arrow_to_proto,
    make_tzaware,
    to_naive_utc,
)
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

ENGINE = "feature_repo.bulk.ArrowComputeEngine"
SQLITE = "feature_repo.bulk.BulkSqliteOnlineStore"
REDIS = "feature_repo.bulk.BulkRedisOnlineStore"

Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]


# -- the compute engine ------------------------------------------------------------------------
class ArrowComputeEngineConfig(FeastConfigBaseModel):
    """`batch_engine: {type: feature_repo.bulk.ArrowComputeEngine}` in feature_store.yaml."""

    type: Literal["feature_repo.bulk.ArrowComputeEngine"] = ENGINE
    backend: str | None = None  # as LocalComputeEngine's: pandas, polars...


class ArrowOutputNode(LocalOutputNode):
    """Feast's output node, but a store with `online_write_arrow` gets the rows as Arrow
    batches of `materialization.online_write_batch_size` rows (all of them in one call,
    so that it may overlap one batch's encoding with the previous one's write)."""

    def execute(self, context: ExecutionContext) -> ArrowTableValue:
        write = getattr(context.online_store, "online_write_arrow", None)
        if write is None or not self.feature_view.online:
            return super().execute(context)
        table = self.get_single_table(context).data
        output = ArrowTableValue(data=table)
        context.node_outputs[self.name] = output
        if table.num_rows == 0:
            return output
        size = context.repo_config.materialization_config.online_write_batch_size
        write(context.repo_config, self.feature_view, table.combine_chunks().to_batches(size))
        if self.feature_view.offline:
            context.offline_store.offline_write_batch(
                config=context.repo_config,
                feature_view=self.feature_view,
                table=table,
                progress=lambda _: None,
            )
        return output


class ArrowFeatureBuilder(LocalFeatureBuilder):
    def build_output_nodes(self, view: Any, input_node: Any) -> ArrowOutputNode:
        node = ArrowOutputNode("output", self.dag_root.view, inputs=[input_node])
        self.nodes.append(node)
        return node


class ArrowComputeEngine(LocalComputeEngine):
    """LocalComputeEngine with ArrowOutputNode: read, filter and de-duplicate as Feast
    does, then write Arrow batches to a store that takes them."""

    def _materialize_one(
        self, registry: BaseRegistry, task: MaterializationTask, **kwargs: Any
    ) -> LocalMaterializationJob:
        job_id = f"{task.feature_view.name}-{task.start_time}-{task.end_time}"
        context = self.get_execution_context(registry, task)
        try:
            builder = ArrowFeatureBuilder(registry, task, backend=self._get_backend(context))
            builder.build().execute(context)
        except Exception as e:  # reported as Feast's engine does: the provider raises it
            return LocalMaterializationJob(job_id, MaterializationJobStatus.ERROR, error=e)
        return LocalMaterializationJob(job_id, MaterializationJobStatus.SUCCEEDED)


# -- encoding a batch as Feast would -----------------------------------------------------------
def _tag(field: str, dtype: np.dtype) -> bytes | None:
    """The bytes protobuf writes before a `field` payload of `dtype` in a ValueProto, or
    None if the encoding is not a fixed tag then the little-endian value."""
    one = np.ones(1, dtype)
    full = ValueProto(**{field: 1.0}).SerializeToString()
    tag = full[: len(full) - dtype.itemsize]
    return tag if full == tag + one.tobytes() else None


# Fixed-width feature types: (the ValueProto field, its little-endian numpy type, its tag)
FIXED = {
    dtype: (field, np.dtype(kind), _tag(field, np.dtype(kind)))
    for dtype, field, kind in ((Float32, "float_val", "<f4"), (Float64, "double_val", "<f8"))
}


def _element() -> bytes:
    """The bytes before each ValueProto in a RepeatedValue (field 1, length-delimited),
    checked: then one byte of length and the value."""
    value = ValueProto(float_val=1.0).SerializeToString()
    full = RepeatedValue(val=[ValueProto(float_val=1.0)]).SerializeToString()
    assert full == full[:1] + bytes([len(value)]) + value, full
    return full[:1]


ELEMENT = _element()


def _protos(config: RepoConfig, view: FeatureView, batch: pa.RecordBatch) -> list[Row]:
    """The batch as Feast's own materialisation converts it."""
    join = {e.name: e.dtype.to_value_type() for e in view.entity_columns}
    return _convert_arrow_to_proto(batch, view, join)


class Cells:
    """One batch of a view's rows, encoded column by column: each feature's serialised
    ValueProto payloads as an (n, width) byte array and its nulls (Feast writes a null or
    NaN as an empty value); None from `of` when a feature is not fixed-width."""

    def __init__(self, names: list[str], tags: list[bytes], payloads: list, nulls: list):
        self.names, self.tags, self.payloads, self.nulls = names, tags, payloads, nulls

    @classmethod
    def of(cls, view: FeatureView, batch: pa.RecordBatch) -> Cells | None:
        names, tags, payloads, nulls = [], [], [], []
        for field in view.features:
            spec = FIXED.get(field.dtype)
            if spec is None or spec[2] is None or field.name not in batch.schema.names:
                return None
            column = batch.column(field.name)
            if not pa.types.is_floating(column.type):
                return None
            values = column.to_numpy(zero_copy_only=False).astype(spec[1])  # nulls: NaN
            names.append(field.name)
            tags.append(spec[2])
            payloads.append(values.view(np.uint8).reshape(len(values), spec[1].itemsize))
            nulls.append(np.isnan(values))
        return cls(names, tags, payloads, nulls)


def entity_keys(config: RepoConfig, view: FeatureView, batch: pa.RecordBatch) -> list[bytes]:
    """Each row's serialised entity key, as Feast serialises it: one int64 join key by
    numpy (checked against Feast's serialiser), any other key through Feast's own
    conversion, row by row."""
    version = config.entity_key_serialization_version
    join = {e.name: e.dtype.to_value_type() for e in view.entity_columns}
    if len(join) == 1 and next(iter(join.values())) == ValueType.INT64:
        [name] = join
        column = batch.column(name)
        if pa.types.is_integer(column.type) and column.null_count == 0:
            prefix = _int64_key_prefix(name, version)
            if prefix is not None:
                ids = column.to_numpy(zero_copy_only=False).astype("<i8")
                return _split(_pack(len(ids), [prefix, ids.view(np.uint8).reshape(-1, 8)]))
    values = _columns_to_proto_values(batch, list(join.items()))
    keys = _build_entity_keys(batch.num_rows, join, values)
    return [serialize_entity_key(k, entity_key_serialization_version=version) for k in keys]


def _int64_key_prefix(name: str, version: int) -> bytes | None:
    def key(value: int) -> bytes:
        proto = EntityKeyProto(join_keys=[name], entity_values=[ValueProto(int64_val=value)])
        return serialize_entity_key(proto, entity_key_serialization_version=version)

    prefix = key(0)[:-8]
    probes = (0, 1, -2, 2**40 + 3)
    ok = all(key(v) == prefix + np.array([v], "<i8").tobytes() for v in probes)
    return prefix if ok else None


def distinct_times(batch: pa.RecordBatch, column: str | None) -> tuple[list, np.ndarray]:
    """(each distinct timestamp of `column` as Feast's conversion makes it, each row's index
    into them); None for every row when there is no such column."""
    if not column:
        return [None], np.zeros(batch.num_rows, np.intp)
    raw = batch.column(column).to_numpy(zero_copy_only=False)
    distinct, inverse = np.unique(raw, return_inverse=True)
    return [_coerce_datetime(v) for v in pd.to_datetime(distinct)], inverse.reshape(-1)


def _pack(n: int, parts: Sequence[bytes | np.ndarray]) -> np.ndarray:
    """Rows of `n` records, each the concatenation of `parts` (constant bytes, or an
    (n, width) uint8 array of per-row bytes), as one (n, total) uint8 array."""
    widths = [len(p) if isinstance(p, bytes) else p.shape[1] for p in parts]
    out = np.empty((n, sum(widths)), np.uint8)
    at = 0
    for part, width in zip(parts, widths, strict=True):
        out[:, at : at + width] = np.frombuffer(part, np.uint8) if isinstance(part, bytes) else part
        at += width
    return out


def _split(rows: np.ndarray, keep: np.ndarray | None = None) -> list[bytes]:
    """Each row of a packed array as bytes, only its `keep` bytes where given."""
    if keep is None:
        width = rows.shape[1]
        flat = rows.tobytes()
        return [flat[i : i + width] for i in range(0, len(flat), width)]
    flat = rows[keep].tobytes()
    ends = np.cumsum(keep.sum(axis=1)).tolist()
    return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _ragged(values: list[bytes], index: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-row byte strings `values[index]` as an (n, longest) array and the mask of their
    bytes (None when all have one length)."""
    lengths = np.array([len(v) for v in values])
    longest = int(lengths.max())
    if (lengths == longest).all():
        table = np.frombuffer(b"".join(values), np.uint8).reshape(len(values), longest)
        return table[index], None
    table = np.zeros((len(values), longest), np.uint8)
    for i, v in enumerate(values):
        table[i, : len(v)] = np.frombuffer(v, np.uint8)
    return table[index], np.arange(longest) < lengths[index][:, None]


class Assembly:
    """Records built from parts, some of whose bytes a row may leave out (a null's
    payload, the padding of a shorter key)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.parts: list[bytes | np.ndarray] = []
        self.keeps: list[np.ndarray | None] = []

    def add(self, part: bytes | np.ndarray, keep: np.ndarray | None = None) -> None:
        self.parts.append(part)
        self.keeps.append(keep)

    def rows(self) -> np.ndarray:
        return _pack(self.n, self.parts)

    def keep(self) -> np.ndarray | None:
        if all(k is None for k in self.keeps):
            return None
        masks = []
        for part, keep in zip(self.parts, self.keeps, strict=True):
            width = len(part) if isinstance(part, bytes) else part.shape[1]
            if keep is None:
                masks.append(np.ones((self.n, width), bool))
            else:
                masks.append(np.broadcast_to(keep.reshape(self.n, -1), (self.n, width)))
        return np.concatenate(masks, axis=1)

    def split(self) -> list[bytes]:
        return _split(self.rows(), self.keep())

    def joined(self) -> bytes:
        keep = self.keep()
        rows = self.rows()
        return rows.tobytes() if keep is None else rows[keep].tobytes()


def _length_byte(nulls: np.ndarray, width: int, null: int) -> np.ndarray:
    """One byte per row: `width` where there is a value, `null` where there is none."""
    return np.where(nulls, null, width).astype(np.uint8).reshape(-1, 1)


# -- SQLite ------------------------------------------------------------------------------------
class BulkSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """`online_store: {type: feature_repo.bulk.BulkSqliteOnlineStore, path: ...}`."""

    type: Literal["feature_repo.bulk.BulkSqliteOnlineStore"] = SQLITE  # type: ignore[assignment]


WRITE_CACHE_KIB = 256 * 1024  # SQLite's page cache while materialising (its default: 2 MiB)
LAYOUTS = "_bulk_layouts"  # id -> the feature names, in the order a row's values are stored


class BulkSqliteOnlineStore(SqliteOnlineStore):
    """One row per entity and view: (entity_key, layout, feature_values, event_ts,
    created_ts) in the table `<Feast's table>__rows`, `feature_values` a RepeatedValue
    of the ValueProtos in the order of the layout's names. Timestamps are stored as
    Feast's SQLite store stores them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rows_tables: set[str] = set()
        self._layout_ids: dict[tuple[str, ...], int] = {}
        self._layout_names: dict[int, tuple[str, ...]] = {}

    @staticmethod
    def rows_table(config: RepoConfig, view: FeatureView) -> str:
        versioning = config.registry.enable_online_feature_view_versioning
        return f"{_table_id(config.project, view, versioning)}__rows"

    def _has_rows_table(self, conn: sqlite3.Connection, name: str) -> bool:
        if name not in self._rows_tables:
            query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
            if conn.execute(query, (name,)).fetchone() is None:
                return False
            self._rows_tables.add(name)
        return True

    def _create_rows_table(self, conn: sqlite3.Connection, name: str) -> None:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {LAYOUTS} "
            "(id INTEGER PRIMARY KEY, names TEXT NOT NULL UNIQUE)"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_quote_id(name)} (entity_key BLOB PRIMARY KEY, "
            "layout INTEGER NOT NULL, feature_values BLOB NOT NULL, event_ts timestamp, "
            "created_ts timestamp) WITHOUT ROWID"
        )
        self._rows_tables.add(name)

    def _layout(self, conn: sqlite3.Connection, names: tuple[str, ...]) -> int:
        if names not in self._layout_ids:
            text = json.dumps(list(names))
            conn.execute(f"INSERT OR IGNORE INTO {LAYOUTS} (names) VALUES (?)", (text,))
            query = f"SELECT id FROM {LAYOUTS} WHERE names = ?"
            (self._layout_ids[names],) = conn.execute(query, (text,)).fetchone()
        return self._layout_ids[names]

    def _names(self, conn: sqlite3.Connection, layout: int) -> tuple[str, ...]:
        if layout not in self._layout_names:
            query = f"SELECT names FROM {LAYOUTS} WHERE id = ?"
            (text,) = conn.execute(query, (layout,)).fetchone()
            self._layout_names[layout] = tuple(json.loads(text))
        return self._layout_names[layout]

    @staticmethod
    def _upsert(name: str) -> str:
        return (
            f"INSERT INTO {_quote_id(name)} "
            "(entity_key, layout, feature_values, event_ts, created_ts) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(entity_key) DO UPDATE SET layout = excluded.layout, "
            "feature_values = excluded.feature_values, event_ts = excluded.event_ts, "
            "created_ts = excluded.created_ts"
        )

    def online_write_arrow(
        self, config: RepoConfig, table: FeatureView, batches: Iterable[pa.RecordBatch]
    ) -> None:
        """Write the view's rows (Arrow batches, as the offline store returned them), one
        transaction a batch."""
        for batch in batches:
            self._write_arrow(config, table, batch)

    def _write_arrow(self, config: RepoConfig, table: FeatureView, batch: pa.RecordBatch) -> None:
        cells = Cells.of(table, batch)
        source = table.batch_source
        times, when = distinct_times(batch, source.timestamp_field)
        created, made = distinct_times(batch, source.created_timestamp_column)
        missing = any(pd.isna(t) for t in [*times, *created] if t is not None)
        if cells is None or missing:
            return self._write_protos(config, table, _protos(config, table, batch), create=True)
        n = batch.num_rows
        record = Assembly(n)
        for tag, payload, nulls in zip(cells.tags, cells.payloads, cells.nulls, strict=True):
            record.add(ELEMENT)  # then the ValueProto's length (< 128: one byte) and bytes
            record.add(_length_byte(nulls, len(tag) + payload.shape[1], 0))
            present = ~nulls.reshape(-1, 1) if nulls.any() else None
            record.add(tag, present)
            record.add(payload, present)
        blobs = record.split()
        keys = entity_keys(config, table, batch)
        event = [_sqlite_time(t) for t in times]
        made_at = [_sqlite_time(t) for t in created]
        rows = zip(
            keys,
            blobs,
            [event[i] for i in when.tolist()],
            [made_at[i] for i in made.tolist()],
            strict=True,
        )
        conn = self._get_conn(config)
        conn.execute(f"PRAGMA cache_size = -{WRITE_CACHE_KIB}")
        name = self.rows_table(config, table)
        with conn:
            self._create_rows_table(conn, name)
            layout = self._layout(conn, tuple(cells.names))
            conn.executemany(
                self._upsert(name),
                # in key order: the table's B-tree is walked once, not jumped about in
                ((k, layout, b, e, c) for k, b, e, c in sorted(rows, key=itemgetter(0))),
            )

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[Row],
        progress: Callable[[int], Any] | None,
    ) -> None:
        """Feast's protobuf rows (a push): into the rows table once the view has one, else
        into Feast's own table, where reads still go."""
        self._write_protos(config, table, data)
        if progress:
            progress(len(data))

    def _write_protos(
        self, config: RepoConfig, table: FeatureView, data: list[Row], create: bool = False
    ) -> None:
        conn = self._get_conn(config)
        name = self.rows_table(config, table)
        if not create and not self._has_rows_table(conn, name):
            super().online_write_batch(config, table, data, None)
            return
        version = config.entity_key_serialization_version
        everything = [f.name for f in table.features]
        with conn:
            self._create_rows_table(conn, name)
            for entity_key, values, timestamp, created_ts in data:
                key = serialize_entity_key(entity_key, entity_key_serialization_version=version)
                if set(values) != set(everything):  # a partial row updates the stored one
                    stored = self._read_rows(conn, name, [key]).get(key)
                    values = {**(stored[0] if stored else {}), **values}
                names = tuple(everything) if set(values) == set(everything) else tuple(values)
                blob = RepeatedValue(val=[values[n] for n in names]).SerializeToString()
                row = (key, self._layout(conn, names), blob, _sqlite_time(timestamp))
                conn.execute(self._upsert(name), (*row, _sqlite_time(created_ts)))

    def _read_rows(
        self, conn: sqlite3.Connection, name: str, keys: list[bytes]
    ) -> dict[bytes, tuple[dict[str, ValueProto], datetime]]:
        found = {}
        for start in range(0, len(keys), 10_000):
            chunk = keys[start : start + 10_000]
            cursor = conn.execute(
                f"SELECT entity_key, layout, feature_values, event_ts FROM {_quote_id(name)} "
                f"WHERE entity_key IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for key, layout, blob, ts in cursor:
                values = RepeatedValue()
                values.ParseFromString(blob)
                found[key] = (dict(zip(self._names(conn, layout), values.val, strict=True)), ts)
        return found

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        conn = self._get_conn(config)
        name = self.rows_table(config, table)
        if not self._has_rows_table(conn, name):
            return super().online_read(config, table, entity_keys, requested_features)
        version = config.entity_key_serialization_version
        keys = [
            serialize_entity_key(k, entity_key_serialization_version=version) for k in entity_keys
        ]
        found = self._read_rows(conn, name, keys)
        result: list[tuple[datetime | None, dict[str, ValueProto] | None]] = []
        for key in keys:
            if key not in found or not found[key][0]:
                result.append((None, None))
                continue
            values, ts = found[key]  # the time as Feast's SQLite store returns it
            ts = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
            result.append((ts, values))
        return result

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ) -> None:
        super().update(
            config, tables_to_delete, tables_to_keep, entities_to_delete, entities_to_keep, partial
        )
        conn = self._get_conn(config)
        for table in tables_to_delete:
            name = self.rows_table(config, table)
            conn.execute(f"DROP TABLE IF EXISTS {_quote_id(name)}")
            self._rows_tables.discard(name)
        conn.commit()

    def teardown(
        self, config: RepoConfig, tables: Sequence[FeatureView], entities: Sequence[Entity]
    ) -> None:
        super().teardown(config, tables, entities)
        self._rows_tables.clear()
        self._layout_ids.clear()
        self._layout_names.clear()


def _sqlite_time(ts: datetime | None) -> Any:
    """What Feast's SQLite store binds for a timestamp: the naive UTC time through the
    adapter sqlite3 holds for datetimes (Feast registers one: whole epoch seconds)."""
    if ts is None:
        return None
    naive = to_naive_utc(ts)
    adapt = sqlite3.adapters.get((type(naive), sqlite3.PrepareProtocol))
    return adapt(naive) if adapt else naive


# -- Redis -------------------------------------------------------------------------------------
class BulkRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """`online_store: {type: feature_repo.bulk.BulkRedisOnlineStore, ...}`: Redis's keys."""

    type: Literal["feature_repo.bulk.BulkRedisOnlineStore"] = REDIS  # type: ignore[assignment]


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


class BulkRedisOnlineStore(RedisOnlineStore):
    """Feast's Redis layout (one hash per entity key and project; a field per feature,
    the murmur3 of `view:feature`, holding its serialised ValueProto; `_ts:view` the
    row's Timestamp; the key's expiry), written as Feast's `skip_dedup` path writes it:
    HSET then EXPIRE per key. Here the RESP commands of a batch are packed by numpy
    and sent at once on one of the client's connections."""

    def online_write_arrow(
        self, config: RepoConfig, table: FeatureView, batches: Iterable[pa.RecordBatch]
    ) -> None:
        """Write the view's rows (Arrow batches): each batch's commands packed while the
        previous batch's are sent (see `_send`); a batch the packing cannot encode goes
        through Feast's own write, as does every batch where Feast's write does more than
        HSET and EXPIRE (a cluster, a sentinel, timestamp checks)."""
        settings = config.online_store
        if settings.redis_type != RedisType.redis or not settings.skip_dedup:
            for batch in batches:
                self.online_write_batch(config, table, _protos(config, table, batch), None)
            return
        commands = (self._commands(config, table, batch) for batch in batches)
        self._send(settings, (c for c in commands if c is not None))

    def _commands(
        self, config: RepoConfig, table: FeatureView, batch: pa.RecordBatch
    ) -> tuple[bytes, int] | None:
        """The batch as RESP commands and the number of replies they get, or None when it
        was written through Feast's own path instead."""
        settings = config.online_store
        cells = Cells.of(table, batch)
        times, when = distinct_times(batch, table.batch_source.timestamp_field)
        if cells is None or any(pd.isna(t) for t in times):
            self.online_write_batch(config, table, _protos(config, table, batch), None)
            return None
        n = batch.num_rows
        view = _versioned_fv_name(table, config)
        stamps = []
        for t in times:
            proto = Timestamp()
            proto.FromDatetime(make_tzaware(t))
            stamps.append(_bulk(proto.SerializeToString()))
        keys = [k + config.project.encode() for k in entity_keys(config, table, batch)]
        key_bulks, key_keep = _ragged([_bulk(k) for k in keys], np.arange(n))
        ttl = settings.key_ttl_seconds
        command = Assembly(n)
        command.add(b"*%d\r\n%s" % (2 * len(cells.names) + 4, _bulk(b"HSET")))
        command.add(key_bulks, key_keep)
        command.add(_bulk(f"_ts:{view}".encode()))
        stamp_bulks, stamp_keep = _ragged(stamps, when)
        command.add(stamp_bulks, stamp_keep)
        for name, tag, payload, nulls in zip(
            cells.names, cells.tags, cells.payloads, cells.nulls, strict=True
        ):
            width = len(tag) + payload.shape[1]
            assert width < 10  # one digit of length, as a null's 0
            command.add(_bulk(_mmh3(f"{view}:{name}")) + b"$")
            command.add(_length_byte(nulls, ord(str(width)), ord("0")))
            command.add(b"\r\n")
            present = ~nulls.reshape(-1, 1) if nulls.any() else None
            command.add(tag, present)
            command.add(payload, present)
            command.add(b"\r\n")
        if ttl:
            command.add(b"*3\r\n" + _bulk(b"EXPIRE"))
            command.add(key_bulks, key_keep)
            command.add(_bulk(str(int(ttl)).encode()))
        return command.joined(), n * (2 if ttl else 1)

    def _send(self, settings: RedisOnlineStoreConfig, batches: Iterator[tuple[bytes, int]]):
        """Send packed commands on one of the client's connections while their replies are
        read: a thread sends each batch as soon as it is packed (Redis works through it
        while the next one is packed), another reads the replies (one each, every one
        read). An error reply or a broken connection raises here; the connection, its
        other replies unread, is then dropped."""
        pool = self._get_client(settings).connection_pool
        conn = pool.get_connection()
        failed: list[BaseException] = []
        payloads: queue.Queue[bytes | None] = queue.Queue(maxsize=2)  # bounds the memory
        counts: queue.Queue[int | None] = queue.Queue()

        def send() -> None:
            try:
                for payload in iter(payloads.get, None):
                    if not failed:
                        conn.send_packed_command([payload])
            except BaseException as e:
                failed.append(e)
                conn.disconnect()  # stops the reader
                for _ in iter(payloads.get, None):  # let the packer finish
                    pass

        def read() -> None:
            try:
                for count in iter(counts.get, None):
                    for _ in range(count):
                        conn.read_response()
            except BaseException as e:
                failed.append(e)
                conn.disconnect()  # stops the sender

        threads = [
            threading.Thread(target=send, name="bulk-redis-send", daemon=True),
            threading.Thread(target=read, name="bulk-redis-read", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            for payload, count in batches:
                if failed:
                    break
                counts.put(count)
                payloads.put(payload)
        finally:
            payloads.put(None)
            counts.put(None)
            for thread in threads:
                thread.join()
            pool.release(conn)
        if failed:
            raise failed[0]
