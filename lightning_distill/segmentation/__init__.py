"""Segmentation toolkit: canvases, few-shot episodes, the label channel, IoU metrics, overlays, teachers."""

from lightning_distill.segmentation.canvas import BACKGROUND, render_canvases, textured_background
from lightning_distill.segmentation.episodes import images_with_class, sample_episode, select_support_set
from lightning_distill.segmentation.few_shot import class_masks, combine_class_logits
from lightning_distill.segmentation.label_coding import code_labels, fixed_label_values, random_label_values
from lightning_distill.segmentation.metrics import IoUTracker, iou_summary
from lightning_distill.segmentation.pictures import SegmentationPictures, class_palette, overlay_picture
from lightning_distill.segmentation.teachers import (
    copy_with_extra_input_channel,
    label_assisted_teacher,
    label_coded_input,
    trained_few_shot_segmenter,
    trained_segmenter,
)

__all__ = [
    "BACKGROUND",
    "IoUTracker",
    "SegmentationPictures",
    "class_masks",
    "class_palette",
    "code_labels",
    "combine_class_logits",
    "copy_with_extra_input_channel",
    "fixed_label_values",
    "images_with_class",
    "iou_summary",
    "label_assisted_teacher",
    "label_coded_input",
    "overlay_picture",
    "random_label_values",
    "render_canvases",
    "sample_episode",
    "select_support_set",
    "textured_background",
    "trained_few_shot_segmenter",
    "trained_segmenter",
]
