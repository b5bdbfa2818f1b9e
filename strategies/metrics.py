"""Merging the sites' metrics, passed to Flower as ``train/evaluate_metrics_aggr_fn``."""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict


def merged_metrics(contents: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of each metric over the replies that report it.

    Sites report different task metrics, so Flower's default ``aggregate_metricrecords``
    (which divides every key by the total weight of all replies) would dilute a task's
    metric by the sites that do not have the task.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for content in contents:
        record = next(iter(content.metric_records.values()))
        weight = float(record[weight_key])
        for key, value in record.items():
            if key == weight_key or not isinstance(value, int | float):
                continue
            sums[key] = sums.get(key, 0.0) + weight * float(value)
            weights[key] = weights.get(key, 0.0) + weight
    merged: dict[str, float] = {k: sums[k] / weights[k] for k in sums}
    merged[weight_key] = sum(
        float(next(iter(c.metric_records.values()))[weight_key]) for c in contents
    )
    return MetricRecord(merged)
