"""FCOS object detection on the shared FPN and towers.

Loss (notes): sigmoid focal (gamma 2, alpha 0.25) / ln C + GIoU + 0.2 * centerness BCE,
each averaged over the positive points. Box operations, focal and GIoU losses and NMS
come from torchvision.ops; mAP from torchmetrics.
"""

from __future__ import annotations

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
from umedpt.data.samples import Sample
from umedpt.models.blocks import DetectionNeck
from umedpt.models.heads import DetectionHead
from umedpt.models.presets import ModelConfig
from umedpt.tasks.base import (
    TASK_TYPES,
    Batch,
    TaskMetrics,
    TaskType,
    log_num_classes,
    normalize_images,
)
from umedpt.tasks.fcos import (
    BACKGROUND,
    assign_targets,
    centerness_target,
    decode_ltrb,
    encode_ltrb,
    make_points,
)

HeadOutputs = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]


def flatten_levels(maps: list[torch.Tensor]) -> torch.Tensor:
    """[(B, K, H, W) per level] -> (B, P, K) with points in make_points' order."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


class DetectionMetrics(TaskMetrics):
    def __init__(self, task: TaskConfig, detection: Detection) -> None:
        self.task, self.detection = task, detection
        self.map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")

    def update(self, outputs: HeadOutputs, batch: Batch) -> None:
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
    name = "detection"
    primary_metric = "map_50"
    strides = DetectionNeck.strides
    score_threshold = 0.05
    nms_threshold = 0.6
    max_detections = 100

    def build_block(self, in_channels: list[int], config: ModelConfig) -> nn.Module:
        return DetectionNeck(in_channels, config.fpn_channels, config.tower_depth)

    def build_head(self, task: TaskConfig, config: ModelConfig) -> nn.Module:
        return DetectionHead(config.fpn_channels, len(task.classes))

    def collate(self, samples: list[Sample]) -> Batch:
        images = normalize_images(torch.stack([s.image for s in samples]))
        boxes = [s.boxes if s.boxes is not None else torch.zeros((0, 4)) for s in samples]
        labels = [
            s.box_labels if s.box_labels is not None else torch.zeros((0,), dtype=torch.long)
            for s in samples
        ]
        return Batch(images, {"boxes": boxes, "labels": labels})

    def _points(self, outputs: HeadOutputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sizes = [tuple(m.shape[-2:]) for m in outputs[0]]
        points, strides, levels = make_points(sizes, self.strides[: len(sizes)])
        device = outputs[0][0].device
        return points.to(device), strides.to(device), levels.to(device)

    def loss(self, outputs: HeadOutputs, batch: Batch, task: TaskConfig) -> torch.Tensor:
        cls_logits = flatten_levels(outputs[0]).float()  # (B, P, C)
        box_raw = flatten_levels(outputs[1]).float()  # (B, P, 4)
        ctr_logits = flatten_levels(outputs[2]).float().squeeze(2)  # (B, P)
        points, strides, levels = self._points(outputs)
        num_classes = cls_logits.shape[2]

        assigned = [
            assign_targets(points, strides, levels, boxes, labels)
            for boxes, labels in zip(batch.targets["boxes"], batch.targets["labels"])
        ]
        point_labels = torch.stack([a[0] for a in assigned])  # (B, P)
        matched_boxes = torch.stack([a[1] for a in assigned])  # (B, P, 4)
        positive = point_labels != BACKGROUND
        num_positive = max(int(positive.sum()), 1)

        cls_target = F.one_hot(point_labels.clamp(min=0), num_classes).to(cls_logits.dtype)
        cls_target = cls_target * positive.unsqueeze(2)
        focal = sigmoid_focal_loss(cls_logits, cls_target, alpha=0.25, gamma=2.0, reduction="sum")
        focal = focal / num_positive / log_num_classes(num_classes + 1)
        if not positive.any():
            return focal

        pos_points = points.expand(positive.shape[0], -1, -1)[positive]
        pos_strides = strides.expand(positive.shape[0], -1)[positive]
        pred_ltrb = F.softplus(box_raw[positive]) * pos_strides.unsqueeze(1)
        pred_boxes = decode_ltrb(pos_points, pred_ltrb)
        target_boxes = matched_boxes[positive]
        giou = generalized_box_iou_loss(pred_boxes, target_boxes, reduction="mean")
        ctr_target = centerness_target(encode_ltrb(pos_points, target_boxes))
        ctr = F.binary_cross_entropy_with_logits(ctr_logits[positive], ctr_target)
        return focal + giou + 0.2 * ctr

    @torch.no_grad()
    def predict(
        self, outputs: HeadOutputs, batch: Batch, task: TaskConfig
    ) -> list[dict[str, torch.Tensor]]:
        cls_logits = flatten_levels(outputs[0]).float()
        box_raw = flatten_levels(outputs[1]).float()
        ctr_logits = flatten_levels(outputs[2]).float()
        points, strides, _ = self._points(outputs)
        height, width = batch.images.shape[-2:]
        results = []
        for image_cls, image_box, image_ctr in zip(cls_logits, box_raw, ctr_logits):
            scores = (image_cls.sigmoid() * image_ctr.sigmoid()).sqrt()  # (P, C)
            point_idx, labels = (scores > self.score_threshold).nonzero(as_tuple=True)
            kept_scores = scores[point_idx, labels]
            if kept_scores.numel() > 1000:
                top = kept_scores.topk(1000).indices
                point_idx, labels, kept_scores = point_idx[top], labels[top], kept_scores[top]
            ltrb = F.softplus(image_box[point_idx]) * strides[point_idx].unsqueeze(1)
            boxes = clip_boxes_to_image(decode_ltrb(points[point_idx], ltrb), (height, width))
            keep = batched_nms(boxes, kept_scores, labels, self.nms_threshold)[
                : self.max_detections
            ]
            results.append(
                {"boxes": boxes[keep], "scores": kept_scores[keep], "labels": labels[keep]}
            )
        return results

    def metrics(self, task: TaskConfig) -> TaskMetrics:
        return DetectionMetrics(task, self)


TASK_TYPES.register(Detection.name, Detection())
