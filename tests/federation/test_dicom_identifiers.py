"""No patient identifier of a DICOM site leaves it or reaches anything it writes.

A short in-process federation with the demo DICOM site (fake names, IDs, birth dates,
accession numbers and UIDs in every file) and a demo PNG site; then ``check-site`` and the
model card. Every file written under the run folder, the site's state folder (its decoded
cache and its DICOM header index among them), the model card and the preview, every reply
the server received, the log and the check-site output are searched for each identifier of
each file."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from flwr.app import ArrayRecord, Message
from typer.testing import CliRunner

from client.app import app as client_app
from federation.settings import RunSettings
from server.federation import run_federation
from server.state import GLOBAL_CHECKPOINT
from tests.federation.fakes import ClientAppGrid
from umedpt.config import load_site_config
from umedpt.data.demo_dicom import FAKE_IDENTIFIER_KEYWORDS, write_dicom_site
from umedpt.data.dicom_index import FOLDER as DICOM_INDEX
from umedpt.export.exporter import export_checkpoint
from umedpt_fl.cli import app as cli


def identifiers(folder: Path) -> set[str]:
    """Every identifying value in the DICOM files under ``folder`` (and each name part)."""
    found: set[str] = set()
    for file in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        for keyword in FAKE_IDENTIFIER_KEYWORDS:
            value = str(ds.get(keyword, "")).strip()
            found.add(value)
            if keyword == "PatientName":
                found.update(part for part in value.split("^") if part)
    found.discard("")
    return found


def reply_bytes(reply: Message) -> bytes:
    """What a reply carries, as bytes: every config/metric value and every array."""
    parts = []
    for name, record in reply.content.items():
        parts.append(name.encode())
        if isinstance(record, ArrayRecord):
            parts += [key.encode() + array.numpy().tobytes() for key, array in record.items()]
        else:
            parts.append(repr(dict(record)).encode())
    return b"\n".join(parts)


@pytest.mark.parametrize("pacs_names", [False, True], ids=["plain-names", "pacs-names"])
def test_no_dicom_identifier_leaves_the_site_or_reaches_its_files(
    demo_sites, tmp_path, caplog, pacs_names
) -> None:
    """With ``pacs_names`` (folders named by PatientID, files by SOPInstanceUID) the paths
    themselves are identifiers: the decoded cache keeps them beside the images on the site's
    disk (and a refused file is named on the site's console and log), but nothing that
    leaves the site, the run folder, the model card or the header index holds one."""
    site_file = write_dicom_site(tmp_path / "data", patients=4, slices=4, pacs_names=pacs_names)
    secrets = identifiers(tmp_path / "data")
    assert len(secrets) > 20  # names, IDs, birth dates, accession numbers, UIDs
    site = load_site_config(site_file)
    out = tmp_path / "run"
    sites = [site_file, demo_sites[3]]
    settings = RunSettings(
        num_server_rounds=1, local_steps=1, out_dir=str(out), tracking="none", seed=1,
        site_configs=",".join(str(s) for s in sites), state_root=str(out / "sites"),
    )  # fmt: skip
    nodes = {100 + i: {"partition-id": i} for i in range(len(sites))}
    grid = ClientAppGrid(client_app, nodes, settings.to_run_config())
    with caplog.at_level(logging.DEBUG):
        report = run_federation(grid, settings)
        preview = tmp_path / "preview.png"
        checked = CliRunner().invoke(cli, ["check-site", str(site_file), "--preview", str(preview)])
    assert report["status"] == "completed"
    assert not report["rounds"][0]["rejected"]
    assert checked.exit_code == 0, checked.output
    said = " ".join(checked.output.split())  # rich wraps long lines
    assert "kept local" in said and "RLE Lossless" in said
    card = export_checkpoint(out / GLOBAL_CHECKPOINT, tmp_path / "card", report=out / "report.json")

    written = [out, site.state_dir, card.folder, preview]
    files = [p for root in written for p in ([root] if root.is_file() else root.rglob("*"))]
    files = [p for p in files if p.is_file()]
    names = {p.name for p in files}
    assert "sent.jsonl" in names and "report.json" in names and "README.md" in names
    assert any(p.suffix == ".safetensors" and "cache" in p.parts for p in files)  # decoded once
    assert any(p.parent.name == DICOM_INDEX and p.suffix == ".json" for p in files)  # headers
    texts = {str(p): p.read_bytes() for p in files}
    texts["replies"] = b"\n".join(reply_bytes(r) for r in grid.received)
    texts["log"] = caplog.text.encode()
    texts["check-site output"] = checked.output.encode()
    texts["check-site output, unwrapped"] = checked.output.replace("\n", "").encode()
    assert len(grid.received) >= 4  # query, train, evaluate... of both sites
    if pacs_names:  # the decoded cache keeps each image with its path, on the site's disk
        texts = {w: c for w, c in texts.items() if "cache" not in Path(w).parts}
        assert any(DICOM_INDEX in Path(w).parts for w in texts) and "replies" in texts
    for where, content in texts.items():
        for secret in secrets:
            assert secret.encode() not in content, f"{secret!r} found in {where}"
            assert str(Path(where).name).find(secret) < 0, f"{secret!r} in the name {where}"
