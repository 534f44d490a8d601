"""Materialisation on Ray (`features.engine: ray`), writing through the project's bulk stores.

Feast's RayComputeEngine reads, filters and de-duplicates a view's rows as Ray Data
tasks, then its write node converts every batch to protobufs and calls the online
store's `online_write_batch`, with any error logged and dropped (a failed write reports
success). `RayArrowComputeEngine` is that engine with two nodes changed, the write as
bulk.ArrowComputeEngine changes Feast's local one: the write node hands each batch to
the store's `online_write_arrow` as Arrow (bulk.BulkSqliteOnlineStore,
bulk.BulkRedisOnlineStore) and lets an error fail the materialisation. Stores without
`online_write_arrow` get Feast's own write. The other is the ttl filter (see
RayArrowFeatureBuilder).

Imported only when feature_store.yaml names the engine (Feast loads it by its type name),
so the default `local` path never loads Ray.
"""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa
from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.common.serde import SerializedArtifacts
from feast.infra.compute_engines.dag.context import ExecutionContext
from feast.infra.compute_engines.dag.model import DAGFormat
from feast.infra.compute_engines.dag.node import DAGNode
from feast.infra.compute_engines.dag.plan import ExecutionPlan
from feast.infra.compute_engines.dag.value import DAGValue
from feast.infra.compute_engines.ray.compute import RayComputeEngine
from feast.infra.compute_engines.ray.config import RayComputeEngineConfig
from feast.infra.compute_engines.ray.feature_builder import RayFeatureBuilder
from feast.infra.compute_engines.ray.job import RayMaterializationJob
from feast.infra.compute_engines.ray.nodes import RayFilterNode, RayWriteNode
from feast.infra.registry.base_registry import BaseRegistry

ENGINE = "feature_repo.ray_engine.RayArrowComputeEngine"


class RayArrowComputeEngineConfig(RayComputeEngineConfig):
    """`batch_engine: {type: feature_repo.ray_engine.RayArrowComputeEngine, ...}`: Feast's
    Ray engine settings (ray_address, ray_conf, write_concurrency...)."""

    type: Literal["feature_repo.ray_engine.RayArrowComputeEngine"] = ENGINE  # type: ignore[assignment]


class RayArrowWriteNode(RayWriteNode):
    """Feast's Ray write node, but a store with `online_write_arrow` gets each Ray batch
    (`materialization.online_write_batch_size` rows) as Arrow, in as many concurrent
    tasks as `write_concurrency` (1 by default: one SQLite writer), and an error raises."""

    def execute(self, context: ExecutionContext) -> DAGValue:
        view = self.feature_view
        if not view.online or not hasattr(context.online_store, "online_write_arrow"):
            return super().execute(context)
        dataset = self.get_single_input_value(context).data
        artifacts = SerializedArtifacts.serialize(
            feature_view=view, repo_config=context.repo_config
        )

        def write(batch: pa.Table) -> pa.Table:
            view, online, offline, config = artifacts.unserialize()
            if batch.num_rows:
                online.online_write_arrow(config, view, batch.combine_chunks().to_batches())
                if view.offline:
                    offline.offline_write_batch(
                        config=config, feature_view=view, table=batch, progress=lambda _: None
                    )
            return pa.table({"rows": [batch.num_rows]})  # what came back: a count, not the rows

        concurrency = self.config.write_concurrency or self.config.max_workers or 1
        counts = dataset.map_batches(
            write,
            batch_format="pyarrow",
            batch_size=context.repo_config.materialization_config.online_write_batch_size,
            concurrency=concurrency,
            zero_copy_batch=True,
        ).materialize()
        rows = sum(int(n) for n in counts.to_pandas()["rows"]) if counts.count() else 0
        return DAGValue(data=counts, format=DAGFormat.RAY, metadata={"written": True, "rows": rows})


class RayArrowFeatureBuilder(RayFeatureBuilder):
    """Feast's Ray plan with RayArrowWriteNode, and, when materialising, no ttl filter: Feast's
    Ray engine drops rows older than the view's ttl by the wall clock, so a day more than 7
    days back (a backfill, a simulated world's dates) materialised nothing; Feast's local
    engine applies the ttl only to a historical join's rows, as this one still does."""

    def build_filter_node(self, view: Any, input_node: DAGNode) -> DAGNode:
        if not self.is_materialization:
            return super().build_filter_node(view, input_node)
        node = RayFilterNode(
            name="filter",
            column_info=self.get_column_info(view),
            config=self.config,
            ttl=None,
            filter_condition=getattr(view, "filter", None),
        )
        node.add_input(input_node)
        self.nodes.append(node)
        return node

    def build(self) -> ExecutionPlan:
        plan = super().build()
        if not self.is_materialization:
            return plan
        nodes = [
            RayArrowWriteNode(n.name, n.feature_view, inputs=n.inputs, config=n.config)
            if type(n) is RayWriteNode
            else n
            for n in plan.nodes
        ]
        for node in nodes:  # the nodes after a write read its output by name: nothing else
            node.inputs = [next(m for m in nodes if m.name == i.name) for i in node.inputs]
        return ExecutionPlan(nodes)


class RayArrowComputeEngine(RayComputeEngine):
    """RayComputeEngine with RayArrowWriteNode: read, filter and de-duplicate as Feast's Ray
    engine does, then write Arrow batches to a store that takes them."""

    def _materialize_one(
        self, registry: BaseRegistry, task: MaterializationTask, **kwargs: Any
    ) -> RayMaterializationJob:
        job_id = f"{task.feature_view.name}-{task.start_time}-{task.end_time}"
        try:
            context = self.get_execution_context(registry, task)
            builder = RayArrowFeatureBuilder(registry, task.feature_view, task, self.config)
            result = builder.build().execute(context)
        except Exception as e:  # reported as Feast's engine does: the provider raises it
            return RayMaterializationJob(job_id, MaterializationJobStatus.ERROR, error=e)
        return RayMaterializationJob(job_id, MaterializationJobStatus.SUCCEEDED, result=result)
