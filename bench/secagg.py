"""Secure aggregation's round-time overhead: masked rounds vs plain rounds, 3 and 8 sites.

Why: secure aggregation adds three message stages, key agreement, secret sharing and one
pseudo-random mask (AES-256-CTR keystream) per group per peer; this measures what that
costs in a round with the arrays of a real model. Every site holds the tiny preset's
encoder plus its classification block (the shapes of
``UMedPTModel(tiny).shared_state_dict()``, so every group is shared);
"training" returns the global arrays plus noise at once, so the round time is all protocol,
serialisation and aggregation. Sites run one after another in this process (``ClientAppGrid``
with a fake ClientApp carrying the real ``client/secagg.py`` stages), so the site-side
figures are the SUM over sites; in a federation sites mask in parallel, and the per-site
figure is ``site seconds / sites``.

    PYTHONPATH=. python3 bench/secagg.py            # ~1 min on 2 cores
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: before Flower is imported

import argparse
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from bench.common import bench_parser, finish_run, median, scratch_dir, start_run
from bench.report import Report
from federation import secagg, wire
from federation.settings import RunSettings
from server.rules import build_rule
from umedpt.config import load_site_config
from umedpt.data.demo import write_demo_federation
from umedpt.model import UMedPTModel
from umedpt.models.presets import PRESETS
from umedpt_fl.inprocess import ClientAppGrid


def model_arrays(preset: str, seed: int) -> dict[str, np.ndarray]:
    """The shared arrays (encoder + classification block) of a demo classification site."""
    with scratch_dir("bench-secagg-") as work:
        site = load_site_config(write_demo_federation(work, seed=0, images_per_site=12)[0])
        model = UMedPTModel(PRESETS.get(preset), site.tasks, seed=seed)
        return {k: v.numpy().copy() for k, v in model.shared_state_dict().items()}


class TimedGrid(ClientAppGrid):
    """Adds up the seconds the sites spend per message type."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.site_seconds: dict[str, float] = defaultdict(float)

    def deliver(self, message: Message) -> Message | None:
        tic = time.perf_counter()
        reply = super().deliver(message)
        self.site_seconds[message.metadata.message_type] += time.perf_counter() - tic
        return reply


def fake_app(arrays: dict[str, np.ndarray], blocks: str):
    """A site that describes itself, 'trains' instantly, scores nothing; real secagg."""
    from flwr.app import ConfigRecord
    from flwr.clientapp import ClientApp

    from client import secagg as client_secagg

    app = ClientApp()

    @app.query()
    def describe(message: Message, context: Context) -> Message:
        info = ConfigRecord(
            {wire.SITE_NAME: f"site-{message.metadata.dst_node_id}", wire.BLOCKS_USED: blocks}
        )
        return Message(RecordDict({wire.SITE_INFO: info}), reply_to=message)

    trained: dict[int, dict[str, np.ndarray]] = {}  # made once per site, reused each round

    class Unlogged:
        """The real site logs each reply as it leaves; this fake one logs nothing."""

        def log_as_sent(self, sent: Message, context: Context) -> Message:
            return sent

    def train_reply(message: Message, context: Context) -> tuple[Message, Unlogged]:
        """The plain reply and its logger, as ``client.secagg.register`` expects them."""
        node = message.metadata.dst_node_id
        if node not in trained:
            rng = np.random.default_rng(node)
            trained[node] = {
                k: (v + rng.normal(0, 1e-3, v.shape)).astype(v.dtype) for k, v in arrays.items()
            }
        out = {k: Array(trained[node][k]) for k in message.content[wire.SHARED_ARRAYS].keys()}
        metrics = MetricRecord({wire.NUM_EXAMPLES: 64, wire.UNIT_WEIGHT: 1})
        content = RecordDict({wire.METRICS: metrics, wire.SHARED_ARRAYS: ArrayRecord(out)})
        return Message(content, reply_to=message), Unlogged()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return train_reply(message, context)[0]

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        """Nothing to score: answered at once (the strategy evaluates after its last round)."""
        metrics = MetricRecord({wire.NUM_EXAMPLES: 1, wire.UNIT_WEIGHT: 1})
        return Message(RecordDict({wire.METRICS: metrics}), reply_to=message)

    client_secagg.register(app, train_reply)
    return app


def run_variant(
    arrays: dict[str, np.ndarray], sites: int, secure: bool, rounds: int
) -> dict[str, Any]:
    blocks = sorted({k.split(".")[1] for k in arrays if k.startswith("blocks.")})
    grid = TimedGrid(fake_app(arrays, ",".join(blocks)), {n: {} for n in range(1, sites + 1)}, {})
    settings = RunSettings(
        num_server_rounds=rounds, eval_every=10_000, secure_aggregation=secure, min_sites=sites
    )
    strategy = build_rule(settings, query_timeout=60)
    strategy.fraction_evaluate = 0.0  # rounds of training only
    initial = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    per_round: list[dict[str, float]] = []  # site seconds by message type, round by round

    def snapshot(server_round: int, arrays: ArrayRecord, record: Any) -> None:
        per_round.append(dict(grid.site_seconds))
        grid.site_seconds.clear()

    strategy.start(grid, initial, num_rounds=rounds, timeout=600, on_round_end=snapshot)
    measured = range(2, rounds + 1)  # round 1 also asks every site which site it is
    seconds = [strategy.rounds[r].seconds for r in measured]
    # Site seconds of the protocol: not the round-1 query, nor the last round's evaluation
    # (a no-op here, sent where the strategy evaluates after its last round regardless).
    skip = ("query", "evaluate")
    site = [{k: v for k, v in per_round[r - 1].items() if k not in skip} for r in measured]
    # The machine is shared: the fastest round is the least disturbed one; its breakdown.
    fastest = min(range(len(seconds)), key=seconds.__getitem__)
    return {
        "sites": sites,
        "secure": secure,
        "measured_rounds": list(measured),
        "round_seconds": seconds,
        "median_round_seconds": median(seconds),
        "min_round_seconds": seconds[fastest],
        # of the fastest round, summed over the sites (they run one after another here)
        "site_seconds_per_round": site[fastest],
        "server_seconds_per_round": seconds[fastest] - sum(site[fastest].values()),
        "bytes_received_per_site": int(median(list(strategy.rounds[2].bytes_received.values()))),
    }


def report_of(result: dict[str, Any]) -> Report:
    rows = []
    for n in result["site_counts"]:
        plain, secure = result["variants"][f"plain-{n}"], result["variants"][f"secure-{n}"]
        stages = secure["site_seconds_per_round"]
        plain_train = plain["site_seconds_per_round"].get("train", 0.0)
        rows.append(
            [
                n,
                f"{plain['min_round_seconds']:.2f} ({plain['median_round_seconds']:.2f})",
                f"{secure['min_round_seconds']:.2f} ({secure['median_round_seconds']:.2f})",
                f"{secure['min_round_seconds'] - plain['min_round_seconds']:.2f}",
                f"{secure['min_round_seconds'] / plain['min_round_seconds']:.1f}x",
                f"{stages.get(secagg.COLLECT_TYPE, 0.0) - plain_train:.2f}",
                f"{sum(v for k, v in stages.items() if k != secagg.COLLECT_TYPE):.2f}",
                f"{secure['server_seconds_per_round']:.2f}",
            ]
        )
    header = [
        "sites",
        "plain round s: fastest (median)",
        "secure round s: fastest (median)",
        "overhead s",
        "ratio",
        "sites' masking s (sum)",
        "sites' key stages s (sum)",
        "server s (unmask, aggregate)",
    ]
    machine = result["machine"]
    notes = []
    for n in result["site_counts"]:
        plain, secure = result["variants"][f"plain-{n}"], result["variants"][f"secure-{n}"]
        masking = secure["site_seconds_per_round"].get(secagg.COLLECT_TYPE, 0.0) - plain[
            "site_seconds_per_round"
        ].get("train", 0.0)
        server_extra = secure["server_seconds_per_round"] - plain["server_seconds_per_round"]
        extra_bytes = secure["bytes_received_per_site"] - plain["bytes_received_per_site"]
        notes.append(
            f"- {n} sites: each site spends about {masking / n:.2f} s masking per round; the "
            f"server {secure['server_seconds_per_round']:.2f} s unmasking and aggregating "
            f"(plain: {plain['server_seconds_per_round']:.2f} s). In a federation, where "
            f"sites mask in parallel, the round would grow by about "
            f"{masking / n + server_extra:.2f} s plus three short message exchanges. Masked "
            f"replies are {extra_bytes} bytes larger than plain ones."
        )
    notes += [
        "- Size: one uint32 weight per group more; values travel as uint32, the size of float32.",
        "- For scale: a tiny-preset site trains about 3 s per 20-step round on this machine"
        " (bench/results/overhead.md, sequential), so a site's masking adds roughly 5-10 %"
        " to its round; the key stages add three round trips of a few hundred bytes each.",
        "- What dominates (cProfile, 8 sites, profiled with Flower's `pseudo_rand_gen`; the"
        " AES-256-CTR keystream that replaced it gives the same round times within noise):"
        " mask generation (one mask stream per"
        " peer per group at each site: a site's cost grows with the number of sites sharing"
        " its groups), the int64 additions of the masks (`ndarrays_arithmetic`) and SecAgg+'s"
        " stochastic rounding (`quantize`). Key agreement (P-384 ECDH) and Shamir sharing"
        " (the two key stages) stay under 0.2 s for all 8 sites together. The server's cost"
        " grows with the active sites (one self mask each) and, with dropouts, with dropped"
        " sites x group members (pairwise masks).",
        f"- Machine: {machine.get('Model name', '?')}, {machine.get('nproc')} cores (shared,"
        f" noisy), torch threads {machine.get('torch_threads')}; total run"
        f" {result.get('total_seconds', 0):.0f} s.",
    ]
    report = Report("Secure aggregation overhead")
    report.text(
        f"Tiny preset shared arrays ({result['parameters']:,} values: encoder + "
        f"classification block, float32), rounds 2-{result['rounds']} of each variant; "
        "the breakdown is the fastest "
        "round's (the 2-core machine is shared); "
        "sites run one after another in one process (in-process grid: messages pass as "
        "objects, no network); 'training' is instant, so the plain round is only array "
        "decoding and aggregation, and the ratio column overstates what a real round feels: "
        "compare the overhead with the seconds of local training instead."
    )
    return report.table(header, rows).heading("Notes").text("\n".join(notes))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, name="secagg", preset="tiny", quick="2 rounds, 3 sites")
    parser.add_argument("--rounds", type=int, default=6, help="round 1 is not measured")
    parser.add_argument("--site-counts", type=int, nargs="*", default=[3, 8])
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.site_counts = 3, [3]
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = start_run(args)
    arrays = model_arrays(args.preset, args.seed)
    variants = {}
    for n in args.site_counts:
        for secure in (False, True):
            name = f"{'secure' if secure else 'plain'}-{n}"
            variants[name] = run_variant(arrays, n, secure, args.rounds)
    fields = {
        "preset": args.preset,
        "parameters": int(sum(a.size for a in arrays.values())),
        "rounds": args.rounds,
        "site_counts": args.site_counts,
        "variants": variants,
    }
    return finish_run(args, "secagg", fields, report_of, start=start)


if __name__ == "__main__":
    main()
