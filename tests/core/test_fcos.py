"""FCOS target assignment on hand-made boxes."""

import torch

from umedpt.tasks.fcos import (
    BACKGROUND,
    assign_targets,
    centerness_target,
    decode_ltrb,
    encode_ltrb,
    make_points,
)


def test_points_are_cell_centres_in_row_major_order() -> None:
    points, strides, levels = make_points([(2, 3), (1, 1)], [8, 16])
    assert points.tolist()[:4] == [[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [4.0, 12.0]]
    assert points.tolist()[-1] == [8.0, 8.0]
    assert strides.tolist() == [8.0] * 6 + [16.0]
    assert levels.tolist() == [0] * 6 + [1]


def _single_level(size: int = 8, stride: int = 8):
    return make_points([(size, size)], [stride])


def test_points_inside_a_box_near_its_centre_are_positive() -> None:
    points, strides, levels = _single_level()
    boxes = torch.tensor([[16.0, 16.0, 40.0, 40.0]])  # centre (28, 28)
    labels, matched = assign_targets(points, strides, levels, boxes, torch.tensor([2]))
    positive = labels != BACKGROUND
    # centre sampling radius 1.5 * 8 = 12 px: cells centred at 20, 28, 36 on each axis
    expected = {(x, y) for x in (20.0, 28.0, 36.0) for y in (20.0, 28.0, 36.0)}
    assert {tuple(p) for p in points[positive].tolist()} == expected
    assert set(labels[positive].tolist()) == {2}
    assert torch.equal(matched[positive], boxes.expand(len(expected), 4))
    assert (matched[~positive] == 0).all()


def test_ambiguous_points_go_to_the_smaller_box() -> None:
    points, strides, levels = _single_level()
    big = [0.0, 0.0, 60.0, 60.0]
    small = [20.0, 20.0, 36.0, 36.0]  # centre (28, 28), inside the big box
    labels, matched = assign_targets(
        points, strides, levels, torch.tensor([big, small]), torch.tensor([0, 1])
    )
    centre = ((points[:, 0] == 28) & (points[:, 1] == 28)).nonzero().item()
    assert labels[centre] == 1
    assert matched[centre].tolist() == small


def test_size_ranges_send_large_boxes_to_coarse_levels() -> None:
    points, strides, levels = make_points([(32, 32), (16, 16)], [8, 16])
    box = torch.tensor([[0.0, 0.0, 200.0, 200.0]])  # max distance ~100 px: level 2 range 64..128
    labels, _ = assign_targets(points, strides, levels, box, torch.tensor([0]))
    positive_levels = set(levels[labels != BACKGROUND].tolist())
    assert positive_levels == {1}


def test_no_boxes_means_all_background() -> None:
    points, strides, levels = _single_level()
    labels, matched = assign_targets(
        points, strides, levels, torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.long)
    )
    assert (labels == BACKGROUND).all() and (matched == 0).all()


def test_ltrb_round_trip_and_centerness() -> None:
    points = torch.tensor([[10.0, 10.0], [12.0, 10.0]])
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 20.0, 20.0]])
    ltrb = encode_ltrb(points, boxes)
    assert ltrb.tolist() == [[10, 10, 10, 10], [12, 10, 8, 10]]
    assert torch.allclose(decode_ltrb(points, ltrb), boxes)
    centerness = centerness_target(ltrb)
    assert centerness[0] == 1.0
    assert torch.isclose(centerness[1], torch.tensor((8 / 12) ** 0.5))
