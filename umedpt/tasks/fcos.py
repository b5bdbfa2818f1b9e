"""FCOS target assignment and box coding (Tian et al., 2019), as plain functions.

Kept apart from the detection task so that assignment can be tested on hand-made boxes.
"""

from __future__ import annotations

import math

import torch

# Max regression distance per pyramid level (P3..P7), as in the FCOS paper.
DEFAULT_SIZE_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 64.0),
    (64.0, 128.0),
    (128.0, 256.0),
    (256.0, 512.0),
    (512.0, math.inf),
)
BACKGROUND = -1


def make_points(
    feature_sizes: list[tuple[int, int]], strides: list[int] | tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres of every feature-map cell, level by level.

    Returns ``points`` (P, 2) as (x, y) in input pixels, ``point_strides`` (P,) and
    ``point_levels`` (P,), in the row-major order of flattened (H, W) maps.
    """
    points, point_strides, point_levels = [], [], []
    for level, ((height, width), stride) in enumerate(zip(feature_sizes, strides)):
        ys = (torch.arange(height, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(width, dtype=torch.float32) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))
        point_strides.append(torch.full((height * width,), float(stride)))
        point_levels.append(torch.full((height * width,), level, dtype=torch.long))
    return torch.cat(points), torch.cat(point_strides), torch.cat(point_levels)


def assign_targets(
    points: torch.Tensor,
    point_strides: torch.Tensor,
    point_levels: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    *,
    size_ranges: tuple[tuple[float, float], ...] = DEFAULT_SIZE_RANGES,
    center_radius: float = 1.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match every point to at most one box.

    A point is a candidate for a box when it lies inside the box and within
    ``center_radius * stride`` of its centre (centre sampling), and the box's largest
    ltrb distance from the point falls in the point's level range. Ties go to the box
    with the smallest area.

    Returns ``point_labels`` (P,) (class index, or BACKGROUND = -1) and
    ``matched_boxes`` (P, 4) xyxy (zeros for background points).
    """
    num_points = points.shape[0]
    if boxes.numel() == 0:
        return (
            torch.full((num_points,), BACKGROUND, dtype=torch.long, device=points.device),
            torch.zeros((num_points, 4), device=points.device),
        )
    x, y = points[:, 0:1], points[:, 1:2]  # (P, 1)
    left, top = x - boxes[:, 0], y - boxes[:, 1]  # (P, N)
    right, bottom = boxes[:, 2] - x, boxes[:, 3] - y
    ltrb = torch.stack([left, top, right, bottom], dim=2)  # (P, N, 4)
    inside_box = ltrb.min(dim=2).values > 0

    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    radius = point_strides.unsqueeze(1) * center_radius  # (P, 1)
    near_centre = ((x - centre_x).abs() < radius) & ((y - centre_y).abs() < radius)

    ranges = torch.tensor(size_ranges, dtype=points.dtype, device=points.device)[point_levels]
    max_distance = ltrb.max(dim=2).values
    in_range = (max_distance >= ranges[:, 0:1]) & (max_distance <= ranges[:, 1:2])

    candidate = inside_box & near_centre & in_range  # (P, N)
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).expand(num_points, -1)
    areas = torch.where(candidate, areas, torch.full_like(areas, math.inf))
    best_area, best_box = areas.min(dim=1)
    matched = torch.isfinite(best_area)
    point_labels = torch.where(matched, labels[best_box], torch.full_like(best_box, BACKGROUND))
    matched_boxes = torch.where(
        matched.unsqueeze(1), boxes[best_box], torch.zeros_like(boxes[best_box])
    )
    return point_labels, matched_boxes


def encode_ltrb(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """xyxy boxes -> (left, top, right, bottom) distances from the points."""
    return torch.stack(
        [
            points[:, 0] - boxes[:, 0],
            points[:, 1] - boxes[:, 1],
            boxes[:, 2] - points[:, 0],
            boxes[:, 3] - points[:, 1],
        ],
        dim=1,
    )


def decode_ltrb(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """(left, top, right, bottom) distances -> xyxy boxes."""
    return torch.stack(
        [
            points[:, 0] - ltrb[:, 0],
            points[:, 1] - ltrb[:, 1],
            points[:, 0] + ltrb[:, 2],
            points[:, 1] + ltrb[:, 3],
        ],
        dim=1,
    )


def centerness_target(ltrb: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)), the FCOS centerness."""
    left_right, top_bottom = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio = (left_right.min(dim=1).values / left_right.max(dim=1).values.clamp(min=1e-6)) * (
        top_bottom.min(dim=1).values / top_bottom.max(dim=1).values.clamp(min=1e-6)
    )
    return ratio.clamp(min=0).sqrt()
