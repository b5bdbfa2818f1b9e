"""The DICOM header index: later loads parse no header, identifiers stay pseudonyms, and a
changed file, another site secret or a damaged index each lead to a fresh parse."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pydicom
import pytest

from umedpt.config import TaskConfig, load_site_config
from umedpt.data import dicom, dicom_index
from umedpt.data.cache import site_cache_dir
from umedpt.data.demo_dicom import FAKE_IDENTIFIER_KEYWORDS, write_dicom_site
from umedpt.data.loading import load_task
from umedpt.data.pseudonyms import KEY_FILE
from umedpt.data.readers import read_records


@pytest.fixture
def task(tmp_path) -> TaskConfig:
    return load_site_config(write_dicom_site(tmp_path, patients=3, slices=3)).tasks[0]


@pytest.fixture
def parses(monkeypatch) -> list[Path]:
    """Every header the reader parses (the index's misses)."""
    seen: list[Path] = []
    real = dicom._dcmread

    def counting(path: Path, source: str, *, header_only: bool = False) -> pydicom.Dataset:
        if header_only:
            seen.append(path)
        return real(path, source, header_only=header_only)

    monkeypatch.setattr(dicom, "_dcmread", counting)
    return seen


def index_file(task: TaskConfig) -> Path:
    assert task.state_dir is not None
    return task.state_dir / dicom_index.FOLDER / f"{task.name}.json"


def test_a_second_listing_parses_no_header_and_gives_the_same_records(task, parses) -> None:
    first = read_records(task)
    assert len(parses) == 10  # 9 slices and the README among them
    parses.clear()
    assert read_records(task) == first
    assert parses == []


@pytest.mark.parametrize("pacs_names", [False, True])
def test_the_index_holds_pseudonyms_only(tmp_path, pacs_names) -> None:
    """Also when folders are named by PatientID and files by SOPInstanceUID: the index keys
    files by a keyed pseudonym of their path, never the path (review finding 7)."""
    site = write_dicom_site(tmp_path, patients=3, slices=3, pacs_names=pacs_names)
    task = load_site_config(site).tasks[0]
    read_records(task)
    text = index_file(task).read_text()
    assert index_file(task).stat().st_mode & 0o077 == 0
    assert str(task.path) not in text and "README" not in text  # no path, no file name
    for file in task.path.rglob("*.dcm"):
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        for keyword in FAKE_IDENTIFIER_KEYWORDS:
            assert str(ds.get(keyword)) not in text, keyword
    entries = json.loads(text)["files"]
    assert len(entries) == 10
    assert sum("error" in facts for _, _, facts in entries.values()) == 1  # the README
    assert all(
        f["patient"].startswith("patient:") for *_, f in entries.values() if "error" not in f
    )


def test_a_changed_file_is_parsed_again(task, parses) -> None:
    read_records(task)
    parses.clear()
    changed = sorted(task.path.rglob("*.dcm"))[4]
    ds = pydicom.dcmread(changed)
    ds.PatientID = "SOMEONE-ELSE"
    ds.save_as(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    records = read_records(task)
    assert parses == [changed]
    groups = {r.image.path: r.group for r in records}
    assert groups[changed] not in {
        g for p, g in groups.items() if p.parent == changed.parent and p != changed
    }


def test_another_site_secret_rebuilds_the_index(task, parses, caplog) -> None:
    first = read_records(task)
    (task.state_dir / KEY_FILE).write_bytes(b"\x01" * 32)
    parses.clear()
    with caplog.at_level(logging.INFO, logger="umedpt.data.dicom_index"):
        again = read_records(task)
    assert len(parses) == 10 and "another site secret" in caplog.text
    assert [r.group for r in again] != [r.group for r in first]


@pytest.mark.parametrize(
    "damage", [b"", b'{"format": 1, "files": {"x": [1', b"[1, 2]", b"\xff\xfe"]
)
def test_a_damaged_index_is_rebuilt_with_a_log_line(task, parses, caplog, damage) -> None:
    first = read_records(task)
    index_file(task).write_bytes(damage)
    parses.clear()
    with caplog.at_level(logging.WARNING, logger="umedpt.data.dicom_index"):
        assert read_records(task) == first
    assert len(parses) == 10 and "unreadable" in caplog.text and "rebuilding" in caplog.text
    parses.clear()
    assert read_records(task) == first and parses == []  # written afresh


def test_a_cached_load_reads_neither_pixels_nor_headers(task, parses) -> None:
    site_cache = site_cache_dir(load_site_config(task.source))
    load_task(task, cache_dir=site_cache)
    parses.clear()
    again = load_task(task, cache_dir=site_cache)
    assert again.from_cache and parses == []
