"""Site-config errors name the file and the field."""

from __future__ import annotations

import pytest

from umedpt.config import load_site_config
from umedpt.errors import ConfigError

_TASK = """
[[tasks]]
name = "{name}"
type = "{type}"
format = "{format}"
path = "data"
classes = ["a", "b"]
image_size = {image_size}
{extra}
"""


def _site(tmp_path, *tasks: dict, header: str = "") -> object:
    body = header
    for task in tasks:
        fields = {
            "name": "t",
            "type": "classification",
            "format": "csv",
            "image_size": 64,
            "extra": "",
        }
        body += _TASK.format(**{**fields, **task})
    path = tmp_path / "site-a.toml"
    path.write_text(body)
    return path


def _error(path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    assert str(path) in str(info.value)
    return info.value


def test_valid_site(tmp_path):
    site = load_site_config(_site(tmp_path, {"name": "x"}, {"name": "y", "format": "npz"}))
    assert site.name == "site-a" and [t.name for t in site.tasks] == ["x", "y"]
    assert site.tasks[1].index == 1 and site.tasks[0].path == tmp_path / "data"


def test_unknown_task_field(tmp_path):
    err = _error(_site(tmp_path, {"extra": "image_sise = 32"}))
    assert err.field == "tasks[0].image_sise" and "valid fields" in err.problem


def test_unknown_site_field(tmp_path):
    err = _error(_site(tmp_path, {}, header='nmae = "x"\n'))
    assert err.field == "nmae"


def test_bad_type(tmp_path):
    err = _error(_site(tmp_path, {"extra": 'batch_size = "16"'}))
    assert err.field == "tasks[0].batch_size" and "'16'" in err.problem


def test_bad_task_type(tmp_path):
    err = _error(_site(tmp_path, {"type": "no-such-type"}))
    assert err.field == "tasks[0].type"


@pytest.mark.parametrize("size", [50, 0, -32])
def test_bad_image_size(tmp_path, size):
    err = _error(_site(tmp_path, {"image_size": size}))
    assert err.field == "tasks[0].image_size" and str(size) in err.problem


def test_duplicate_task_names(tmp_path):
    err = _error(_site(tmp_path, {"name": "same"}, {"name": "same"}))
    assert err.field == "tasks[1].name" and "twice" in err.problem


@pytest.mark.parametrize(
    ("task_type", "fmt"), [("segmentation", "csv"), ("detection", "npz"), ("classification", "voc")]
)
def test_bad_format_for_type(tmp_path, task_type, fmt):
    err = _error(_site(tmp_path, {"type": task_type, "format": fmt}))
    assert err.field == "tasks[0].format" and fmt in err.problem


def test_unknown_format(tmp_path):
    err = _error(_site(tmp_path, {"format": "nrrd"}))
    assert err.field == "tasks[0].format" and "class-folders" in err.problem


def test_bad_split_fraction(tmp_path):
    err = _error(_site(tmp_path, {"extra": "[tasks.split]\nval = 1.5"}))
    assert err.field == "tasks[0].split.val"


def test_bad_group_pattern(tmp_path):
    err = _error(_site(tmp_path, {"extra": "[tasks.split]\ngroup_pattern = '(('"}))
    assert err.field == "tasks[0].split.group_pattern"


def test_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[[tasks]\n")
    err = _error(path)
    assert err.field == "<file>"


def test_class_weighting_is_checked_and_kept_from_dp_sites(tmp_path):
    site = load_site_config(_site(tmp_path, {"extra": 'class_weighting = "balanced"'}))
    assert site.tasks[0].class_weighting == "balanced" and site.tasks[0].class_weights == ()
    assert load_site_config(_site(tmp_path, {})).tasks[0].class_weighting == "none"
    err = _error(_site(tmp_path, {"extra": 'class_weighting = "inverse"'}))
    assert err.field == "tasks[0].class_weighting" and "'inverse'" in err.problem
    err = _error(_site(tmp_path, {"type": "multilabel", "extra": 'class_weighting = "balanced"'}))
    assert err.field == "tasks[0].class_weighting" and "multilabel" in err.problem
    privacy = "[privacy]\ntarget_epsilon = 8.0\ntarget_delta = 1e-5\nmax_grad_norm = 1.0\n"
    err = _error(
        _site(tmp_path, {}, {"name": "y", "extra": 'class_weighting = "balanced"'}, header=privacy)
    )
    assert err.field == "tasks[1].class_weighting" and "[privacy]" in err.problem
