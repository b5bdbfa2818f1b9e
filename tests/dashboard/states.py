"""Run-states built by hand, for the dashboard's tests: two sites, rounds 10 s apart."""

from __future__ import annotations

from federation import wire

T0 = 1_700_000_000.0
MB = 1_000_000


def site(node: int, tasks: str) -> dict:
    return {wire.SITE_NAME: "?", wire.TASKS: tasks, "node_id": node, "blocks": []}


def round_record(n: int, *, asked, replied, rejected=(), eval_metrics=None, train_extra=None):
    return {
        "round": n,
        "started": T0 + 10 * (n - 1),
        "seconds": 8.0,
        "bytes_sent": {s: 2 * MB for s in asked},
        "bytes_sent_for_evaluation": {s: MB for s in (eval_metrics or {})},
        "bytes_received": {s: 2 * MB for s in replied},
        "train_metrics": {
            s: {wire.TRAIN_SECONDS: 1.0, **(train_extra or {}).get(s, {})} for s in replied
        },
        "eval_metrics": eval_metrics or {},
        "rejected": [list(r) for r in rejected],
    }


def state(rounds, *, status="running", total=5, **extra) -> dict:
    return {
        "status": status,
        "config": {
            "run-key": "abc123",
            "strategy": "fedavg",
            "local-steps": 2,
            "schedule": "cosine",
            "secure-aggregation": False,
            "client-dp-noise": 0.0,
        },
        "sites": {
            "clinic-a": site(11, "lesions:classification:balanced_accuracy"),
            "clinic-b": site(12, "blobs:segmentation:dice"),
        },
        "rounds": rounds,
        "total_rounds": total,
        "running_round": len(rounds) + 1 if status == "running" else None,
        "round_started": T0 + 10 * len(rounds),
        "started": T0,
        "resumes": [],
        "updated": T0 + 10 * len(rounds),
        **extra,
    }
