"""What `simulate` and `server` print about privacy at the end of a run."""

from __future__ import annotations

from rich.console import Console

from server.report import privacy_summary
from umedpt_fl.run_summary import privacy_table


def rendered(report: dict) -> str:
    console = Console(width=200, record=True)
    table = privacy_table(report)
    assert table is not None
    console.print(table)
    return console.export_text()


def test_each_dp_site_shows_its_spend_budget_delta_and_noise() -> None:
    metrics = {"dp-epsilon": 0.42, "dp-delta": 1e-5, "dp-target-epsilon": 2.0,
               "dp-noise-multiplier": 1.3, "loss": 1.0}  # fmt: skip
    report = {
        "rounds": [
            {"round": 1, "train_metrics": {"a": {**metrics, "dp-epsilon": 0.2}, "b": {"loss": 1}}},
            {"round": 2, "train_metrics": {"a": metrics}},
        ],
        "client_dp": {"encoder": {"noise_multiplier": 0.8}},
        "client_dp_sites": {"b": {"epsilon": 3.5, "delta": 1e-6, "releases": {"encoder": 2}}},
    }
    assert privacy_summary(report)["a"]["target_epsilon"] == 2.0
    text = rendered(report)
    row_a = next(line for line in text.splitlines() if line.strip("│ ").startswith("a "))
    assert "0.42 / 2" in row_a and "1e-05" in row_a and "1.3" in row_a
    row_b = next(line for line in text.splitlines() if line.strip("│ ").startswith("b "))
    assert "client-level" in row_b and "3.5 / -" in row_b and "0.8" in row_b


def test_no_table_without_dp() -> None:
    assert privacy_table({"rounds": [{"round": 1, "train_metrics": {"a": {"loss": 1}}}]}) is None
