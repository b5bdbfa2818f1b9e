"""FCOS object detection on the shared FPN and towers.

Loss: sigmoid focal (``focal_gamma`` 2, ``focal_alpha`` 0.25) / ln C, GIoU, and
``centerness_weight`` (0.2) x centerness BCE, each averaged over the positive points and
returned as named components (``classification``, ``bbox_regression``, ``centerness``),
as torchvision's ``FCOSHead.compute_loss`` names them. Box operations, focal and GIoU
losses and NMS come from torchvision.ops; mAP from torchmetrics.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import (
    batched_nms,
    clip_boxes_to_image,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

from umedpt.config import TaskConfig
from umedpt.data.augment import Transform, augment_with_boxes
from umedpt.data.kinds import Ragged
from umedpt.data.samples import Record, Sample, TaskData
from umedpt.data.stats import class_counts, describe
from umedpt.data.targets import LoadContext, check_boxes
from umedpt.models.blocks import DetectionNeck
from umedpt.models.heads import DetectionHead, FCOSOutputs
from umedpt.models.presets import ModelConfig
from umedpt.tasks.base import (
    Batch,
    LossComponents,
    TaskMetrics,
    TaskType,
    log_num_classes,
    noise_image,
    register_task_type,
    stack_images,
)
from umedpt.tasks.fcos import (
    BACKGROUND,
    assign_targets,
    centerness_target,
    decode_ltrb,
    encode_ltrb,
    make_points,
)


def flatten_levels(maps: list[torch.Tensor]) -> torch.Tensor:
    """[(B, K, H, W) per level] -> (B, P, K) with points in make_points' order."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


class DetectionMetrics(TaskMetrics):
    def __init__(self, task: TaskConfig, detection: Detection) -> None:
        self.task, self.detection = task, detection
        self.map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")

    def update(self, outputs: FCOSOutputs, batch: Batch) -> None:
        predictions = self.detection.predict(outputs, batch, self.task)
        targets = [
            {"boxes": b.cpu(), "labels": lab.cpu()}
            for b, lab in zip(batch.targets["boxes"], batch.targets["labels"])
        ]
        self.map.update([{k: v.cpu() for k, v in p.items()} for p in predictions], targets)

    def compute(self) -> dict[str, float]:
        result = self.map.compute()
        return {"map": float(result["map"]), "map_50": float(result["map_50"])}


class Detection(TaskType):
    """Boxes per image; three loss components.

    Record targets ``boxes`` (``(x_min, y_min, x_max, y_max)`` in pixels of the original
    image) and ``box_labels`` (class indices), both tuples, possibly empty. Sample targets
    ``boxes``, float32 (N, 4) xyxy in resized pixels, and ``box_labels``, int64 (N,).

    The loss weights and the post-processing limits are keyword arguments with FCOS's
    defaults; the registered instance uses the defaults.
    """

    name = "detection"
    primary_metric = "map_50"
    strides = DetectionNeck.strides
    target_fields = {"boxes": Ragged(), "box_labels": Ragged()}
    synthetic_classes = ("square",)

    def __init__(
        self,
        *,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        centerness_weight: float = 0.2,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.6,
        max_detections: int = 100,
        pre_nms_topk: int = 1000,
    ) -> None:
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.centerness_weight = centerness_weight
        self.score_threshold = score_threshold  # points scoring below are never boxes
        self.nms_threshold = nms_threshold  # IoU above which NMS keeps only the best box
        self.max_detections = max_detections  # boxes kept per image after NMS
        self.pre_nms_topk = pre_nms_topk  # best-scoring (point, class) pairs NMS looks at

    def load_targets(self, record: Record, sample: Sample, context: LoadContext) -> None:
        height, width = sample.original_size
        boxes, labels = check_boxes(
            record.targets.get("boxes", ()),
            record.targets.get("box_labels", ()),
            (height, width),
            len(context.task.classes),
            context.dropped,
            str(record.image),
        )
        size = context.task.image_size
        scale = np.array([size / width, size / height, size / width, size / height], np.float32)
        sample.targets["boxes"] = torch.from_numpy(boxes * scale)
        sample.targets["box_labels"] = torch.from_numpy(labels)

    def augment(self, sample: Sample, transform: Transform) -> Sample:
        """Boxes move with the image; clipped, and dropped with their labels if they vanish."""
        return augment_with_boxes(sample, transform, "boxes", "box_labels")

    def collate(self, samples: list[Sample]) -> Batch:
        no_boxes, no_labels = torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.long)
        boxes = [s.targets.get("boxes", no_boxes) for s in samples]
        labels = [s.targets.get("box_labels", no_labels) for s in samples]
        return Batch(stack_images(samples), {"boxes": boxes, "labels": labels})

    def synthetic_samples(
        self, n: int, generator: torch.Generator, *, image_size: int = 64
    ) -> list[Sample]:
        """Noise with one bright square at a random place, boxed (its corners land on FCOS
        points, so every loss term takes its full path)."""
        samples = []
        side = max(4, image_size // 4)
        for i in range(n):
            image = noise_image(image_size, generator)
            y, x = torch.randint(0, image_size - side, (2,), generator=generator).tolist()
            image[:, y : y + side, x : x + side] += 120
            targets = {
                "boxes": torch.tensor([[x, y, x + side, y + side]], dtype=torch.float32),
                "box_labels": torch.tensor([0]),
            }
            samples.append(Sample(image, f"{self.name}-{i}", targets))
        return samples

    def summarize(self, task: TaskConfig, data: TaskData) -> dict[str, Any]:
        all_samples = [s for samples in data.splits.values() for s in samples]
        counts = [len(s.targets.get("boxes", ())) for s in all_samples]
        labels = [int(v) for s in all_samples for v in s.targets.get("box_labels", ())]
        return {
            "boxes_per_image": {**describe(counts), "images_without_boxes": counts.count(0)},
            "box_counts": class_counts(labels, task.classes),
        }

    def draw(self, ax: Any, sample: Sample, task: TaskConfig) -> None:
        from matplotlib.patches import Rectangle  # only previews need matplotlib

        if "boxes" not in sample.targets or "box_labels" not in sample.targets:
            return
        boxes, labels = sample.targets["boxes"], sample.targets["box_labels"]
        for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
            x0, y0, x1, y1 = box
            color = f"C{label % 10}"
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=color, lw=1))
            ax.text(x0, y0, task.classes[label], color=color, fontsize=6, va="bottom")
        ax.set_title(f"{len(boxes)} boxes", fontsize=8)

    def stratum(self, sample: Sample) -> Hashable:
        if "box_labels" not in sample.targets:
            return super().stratum(sample)
        return ("boxes", tuple(sorted({int(c) for c in sample.targets["box_labels"]})))

    def build_block(self, in_channels: list[int], config: ModelConfig) -> nn.Module:
        return DetectionNeck(in_channels, config.fpn_channels, config.tower_depth)

    def build_head(self, task: TaskConfig, config: ModelConfig) -> nn.Module:
        return DetectionHead(config.fpn_channels, len(task.classes))

    def _points(self, outputs: FCOSOutputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sizes = [tuple(m.shape[-2:]) for m in outputs.cls_logits]
        points, strides, levels = make_points(sizes, self.strides[: len(sizes)])
        device = outputs.cls_logits[0].device
        return points.to(device), strides.to(device), levels.to(device)

    def loss(self, outputs: FCOSOutputs, batch: Batch, task: TaskConfig) -> LossComponents:
        cls_logits = flatten_levels(outputs.cls_logits).float()  # (B, P, C)
        box_raw = flatten_levels(outputs.bbox_regression).float()  # (B, P, 4)
        ctr_logits = flatten_levels(outputs.centerness).float().squeeze(2)  # (B, P)
        points, strides, levels = self._points(outputs)
        num_classes = cls_logits.shape[2]

        assigned = [
            assign_targets(points, strides, levels, boxes, labels)
            for boxes, labels in zip(batch.targets["boxes"], batch.targets["labels"])
        ]
        point_labels = torch.stack([a[0] for a in assigned])  # (B, P)
        matched_boxes = torch.stack([a[1] for a in assigned])  # (B, P, 4)
        positive = point_labels != BACKGROUND  # (B, P)
        num_positive = max(int(positive.sum()), 1)

        cls_target = F.one_hot(point_labels.clamp(min=0), num_classes).to(cls_logits.dtype)
        cls_target = cls_target * positive.unsqueeze(2)  # (B, P, C), all 0 for background
        focal = sigmoid_focal_loss(
            cls_logits, cls_target, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )
        focal = focal / num_positive / log_num_classes(num_classes + 1)
        if not positive.any():  # no box in the batch: only the classification term applies
            zero = focal.new_zeros(())
            return {"classification": focal, "bbox_regression": zero, "centerness": zero}

        pos_points = points.expand(positive.shape[0], -1, -1)[positive]  # (N, 2)
        pos_strides = strides.expand(positive.shape[0], -1)[positive]  # (N,)
        pred_ltrb = F.softplus(box_raw[positive]) * pos_strides.unsqueeze(1)  # (N, 4)
        pred_boxes = decode_ltrb(pos_points, pred_ltrb)
        target_boxes = matched_boxes[positive]
        giou = generalized_box_iou_loss(pred_boxes, target_boxes, reduction="mean")
        ctr_target = centerness_target(encode_ltrb(pos_points, target_boxes))
        ctr = F.binary_cross_entropy_with_logits(ctr_logits[positive], ctr_target)
        return {
            "classification": focal,
            "bbox_regression": giou,
            "centerness": self.centerness_weight * ctr,
        }

    @torch.no_grad()
    def predict(
        self, outputs: FCOSOutputs, batch: Batch, task: TaskConfig
    ) -> list[dict[str, torch.Tensor]]:
        cls_logits = flatten_levels(outputs.cls_logits).float()  # (B, P, C)
        box_raw = flatten_levels(outputs.bbox_regression).float()  # (B, P, 4)
        ctr_logits = flatten_levels(outputs.centerness).float()  # (B, P, 1)
        points, strides, _ = self._points(outputs)
        height, width = batch.images.shape[-2:]
        results = []
        for image_cls, image_box, image_ctr in zip(cls_logits, box_raw, ctr_logits):
            scores = (image_cls.sigmoid() * image_ctr.sigmoid()).sqrt()  # (P, C)
            point_idx, labels = (scores > self.score_threshold).nonzero(as_tuple=True)
            kept_scores = scores[point_idx, labels]
            if kept_scores.numel() > self.pre_nms_topk:
                top = kept_scores.topk(self.pre_nms_topk).indices
                point_idx, labels, kept_scores = point_idx[top], labels[top], kept_scores[top]
            ltrb = F.softplus(image_box[point_idx]) * strides[point_idx].unsqueeze(1)
            boxes = clip_boxes_to_image(decode_ltrb(points[point_idx], ltrb), (height, width))
            keep = batched_nms(boxes, kept_scores, labels, self.nms_threshold)
            keep = keep[: self.max_detections]
            results.append(
                {"boxes": boxes[keep], "scores": kept_scores[keep], "labels": labels[keep]}
            )
        return results

    def metrics(self, task: TaskConfig) -> TaskMetrics:
        return DetectionMetrics(task, self)


register_task_type(Detection())
