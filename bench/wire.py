"""Bytes on the wire per site and round vs the size of the whole model.

Why: a site only exchanges the encoder and the shared blocks its tasks use (never its heads),
and the server holds every block. This computes, for each demo site and for the ``tiny`` and
``swin-t`` presets, exactly what ``strategies.GroupedStrategy`` sends (the global
shared state's keys whose group is the encoder or one of the site's blocks, measured with the
strategy's own ``arrays_nbytes``: serialised npy payloads as they travel) and compares it with

- the site's whole ``UMedPTModel`` state (encoder + its blocks + its heads),
- the server's global shared state (encoder + every task type's block).

No training is needed for that (models are only built). Then one short tiny federation
(1 round x 1 local step, in-process ``run_federation`` + ``ClientAppGrid``, no Ray) confirms
the computed tiny payloads against ``report.json``'s ``bytes_sent`` / ``bytes_received``.

Note: ``report.json`` counts the training messages only. A round that also evaluates sends
every site the same shared payload once more (evaluation replies carry only scalars), so
downstream traffic is 2x the payload in evaluated rounds.

    PYTHONPATH=. python3 bench/wire.py            # ~1 min
    PYTHONPATH=. python3 bench/wire.py --quick --out /tmp/bench
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: before Flower is imported

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import bench_parser, finish_run, scratch_dir, start_run
from bench.report import Report
from bench.simtools import federate_in_process
from federation.settings import RunSettings
from server.federation import initial_weights
from strategies import SiteInfo, arrays_nbytes
from strategies.messages import site_payload
from umedpt import contract
from umedpt.config import load_site_config
from umedpt.data.demo import write_demo_federation
from umedpt.model import UMedPTModel
from umedpt.models.presets import model_config

log = logging.getLogger("bench.wire")

MB = 1e6


def tensor_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def preset_rows(preset: str, site_files: Sequence[Path], seed: int) -> dict[str, Any]:
    """Payload per site as the strategy selects it, vs the site's whole model and the global."""
    # With --share-blocks, the largest payload; by default a site exchanges its encoder only
    # (the encoder_bytes column).
    settings = RunSettings(preset=preset, seed=seed, share_blocks=True)
    global_arrays = initial_weights(settings)
    global_state = global_arrays.to_torch_state_dict()
    config = model_config(preset, None)
    rows = []
    for file in site_files:
        site = load_site_config(file)
        model = UMedPTModel(config, site.tasks, seed=seed)
        full = model.state_dict()
        # the strategy's own selection: global keys whose group the site uses
        payload = site_payload(global_arrays, SiteInfo(0, site.name, tuple(sorted(model.blocks))))
        keys = list(payload.keys())
        shared_here = model.shared_state_dict()
        assert set(keys) == set(shared_here), f"{site.name}: payload keys != site's shared keys"
        heads = {k: v for k, v in full.items() if not contract.is_shared(k)}
        rows.append(
            {
                "site": site.name,
                "tasks": ",".join(f"{t.name}:{t.type}" for t in site.tasks),
                "blocks": ",".join(sorted(model.blocks)),
                "payload_bytes": arrays_nbytes(payload),  # one direction, one message
                "payload_tensor_bytes": tensor_bytes({k: global_state[k] for k in keys}),
                "payload_arrays": len(keys),
                "site_model_bytes": tensor_bytes(full),
                "site_heads_bytes": tensor_bytes(heads),
                "encoder_bytes": tensor_bytes(contract.select(full, [contract.ENCODER])),
            }
        )
        del model
    return {
        "preset": preset,
        "encoder": config.encoder,
        "global_shared_bytes": tensor_bytes(global_state),
        "global_shared_payload_bytes": arrays_nbytes(global_arrays),
        "global_blocks_bytes": {
            b: tensor_bytes(contract.select(global_state, [f"{contract.BLOCKS}.{b}"]))
            for b in sorted(
                {contract.block_of(contract.group_of(k)) for k in global_state} - {None}
            )
        },
        "sites": rows,
    }


def confirm_with_run(site_files: Sequence[Path], work: Path, seed: int) -> dict[str, Any]:
    """One tiny round through run_federation: what report.json says went over the wire."""
    report = federate_in_process(
        site_files,
        work / "run",
        num_server_rounds=1,
        local_steps=1,
        seed=seed,
        preset="tiny",
        share_blocks=True,
    )
    record = report["rounds"][0]
    return {
        "bytes_sent": record["bytes_sent"],
        "bytes_received": record["bytes_received"],
        "global_shared_bytes": report["global_shared_bytes"],
    }


def report_of(result: dict[str, Any]) -> Report:
    report = Report("Bytes on the wire per site and round vs the whole model")
    report.text(
        "Four demo sites (`umedpt-fl demo-data`): clinic-a classification, clinic-b "
        "segmentation, clinic-c detection, clinic-d classification. Payload = what the strategy "
        "sends a site for training, and what the site sends back (same keys), as serialised "
        "npy arrays (`strategies.arrays_nbytes`), measured with `--share-blocks` (the largest "
        "payload; by default a site sends its encoder only, the encoder column). MB = 10^6 bytes."
    )
    header = [
        "preset",
        "site",
        "blocks",
        "payload down = up (MB)",
        "per round, train only (MB)",
        "site's whole model (MB)",
        "of which heads (MB)",
        "payload / site model",
        "global shared (MB)",
        "payload / global",
    ]
    rows = []
    for preset in result["presets"]:
        g = preset["global_shared_bytes"]
        for s in preset["sites"]:
            rows.append(
                [
                    preset["preset"],
                    s["site"],
                    s["blocks"],
                    f"{s['payload_bytes'] / MB:.2f}",
                    f"{2 * s['payload_bytes'] / MB:.2f}",
                    f"{s['site_model_bytes'] / MB:.2f}",
                    f"{s['site_heads_bytes'] / MB:.4f}",
                    f"{s['payload_bytes'] / s['site_model_bytes']:.3f}",
                    f"{g / MB:.2f}",
                    f"{s['payload_bytes'] / g:.3f}",
                ]
            )
    report.table(header, rows)
    totals = []
    for preset in result["presets"]:
        blocks = ", ".join(f"{b} {v / MB:.2f}" for b, v in preset["global_blocks_bytes"].items())
        totals.append(
            f"- {preset['preset']} ({preset['encoder']}): global shared "
            f"{preset['global_shared_bytes'] / MB:.2f} MB = encoder "
            f"{preset['sites'][0]['encoder_bytes'] / MB:.2f} MB + blocks ({blocks}) MB."
        )
    report.text("\n".join(totals))
    check = result.get("confirmed")
    if check:
        report.text(
            "Confirmation (tiny, 1 round x 1 local step, `run_federation` in-process): "
            "`report.json` bytes_sent / bytes_received per site vs computed payload:"
        )
        report.table(
            ["site", "report bytes_sent", "report bytes_received", "computed", "match"],
            [
                [
                    site,
                    check["bytes_sent"][site],
                    check["bytes_received"][site],
                    computed,
                    "yes"
                    if check["bytes_sent"][site] == check["bytes_received"][site] == computed
                    else "NO",
                ]
                for site, computed in check["computed"].items()
            ],
        )
    return report.text(
        "Rounds that also evaluate send the payload down once more (not in `report.json`): "
        "3x payload per site in such a round."
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, name="wire", threads=1, quick="tiny preset only")
    parser.add_argument("--presets", nargs="*", default=["tiny", "swin-t"])
    parser.add_argument("--no-run", action="store_true", help="skip the confirming tiny run")
    args = parser.parse_args(argv)
    if args.quick:
        args.presets = ["tiny"]
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = start_run(args)
    with scratch_dir("bench-wire-") as work:
        site_files = write_demo_federation(work / "demo", seed=args.seed, images_per_site=30)
        presets = []
        for preset in args.presets:
            log.info("preset %s", preset)
            presets.append(preset_rows(preset, site_files, args.seed))
        confirmed = None
        if not args.no_run and "tiny" in args.presets:
            confirmed = confirm_with_run(site_files, work, args.seed)
            tiny = next(p for p in presets if p["preset"] == "tiny")
            confirmed["computed"] = {s["site"]: s["payload_bytes"] for s in tiny["sites"]}
            confirmed["global_computed"] = tiny["global_shared_bytes"]
    fields = {"seed": args.seed, "presets": presets, "confirmed": confirmed}
    return finish_run(args, "wire", fields, report_of, start=start)


if __name__ == "__main__":
    main()
