"""SAM1-style promptable instance segmentation (``predict_inst``) on one frame's cached features.

SAM3's interactive instance predictor is its tracker's SAM heads without memory: the
tracker neck's features plus the learned "no memory" embedding, then the prompt
encoder and mask decoder. ``InstancePredictor`` shares those modules with a
``TrackerModel`` (one set of weights serves clicking and tracking, as in SAM3) and
caches the frame's features in ``set_image`` so that every further prompt costs only
the prompt encoder + mask decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from .efficientsam3 import EfficientSam3Model
from .tracker import TrackerModel
from .tracker_graphs import run_sam_heads
from .tracker_neck import TrackerFrame


class InstancePredictor:
    """Points / boxes -> masks + IoU scores on the cached features of one image.

    Coordinates are pixels of the model input: the ``image_size`` square the whole image is
    stretched to, without padding (``pipeline.preprocess``, SAM3's own). A point (x, y) of a
    W x H image is (x * S / W, y * S / H) there; masks come back at that size.
    """

    def __init__(self, image_model: EfficientSam3Model, tracker: TrackerModel):
        if image_model.config.image_size != tracker.image_config.image_size:
            raise ValueError("image model and tracker were built for different input sizes")
        self.image_model = image_model
        self.tracker = tracker
        self._frame: TrackerFrame | None = None
        self._embeddings: torch.Tensor | None = None

    @property
    def is_image_set(self) -> bool:
        return self._frame is not None

    @torch.inference_mode()
    def set_image(self, pixel_values: torch.Tensor) -> None:
        """Encode one image ([1, 3, S, S], normalised as for ``encode_image``) and cache its features."""
        self.reset_image()  # an image that fails to encode must not leave the previous one answering
        self.set_image_features(self.image_model.encode_image(pixel_values))

    @torch.inference_mode()
    def set_image_features(self, image_features: Sam3VisionEncoderOutput) -> None:
        """Cache features the pipeline already computed (the trunk runs once per frame)."""
        self.reset_image()
        frame = self.tracker.encode_frame(image_features)
        self._frame = frame
        self._embeddings = frame.feat + self.tracker.sam.no_memory_embedding.view(1, -1, 1, 1)

    def reset_image(self) -> None:
        self._frame = None
        self._embeddings = None

    @torch.inference_mode()
    def predict(
        self,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        box: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAM's ``predict``: returns (masks [K, S, S] bool, iou_scores [K], low_res_logits [K, 4g, 4g]).

        ``point_coords`` [P, 2] (x, y) with ``point_labels`` [P] (1 foreground, 0 background);
        ``box`` [4] xyxy. K is 3 with ``multimask_output`` (ambiguous prompts), else 1.
        Several prompts at once give [B, K, ...] outputs: ``box`` [B, 4] (each box with the same
        points, if any), or ``point_coords`` [B, P, 2] with ``point_labels`` [B, P] (one point set
        per prompt, and per box when ``box`` is [B, 4]: SAM's ``predict_torch`` layout).
        """
        if self._frame is None or self._embeddings is None:
            raise RuntimeError("call set_image() before predict()")
        if point_coords is None and box is None:
            raise ValueError("give point_coords and/or box")
        device = self._embeddings.device
        per_prompt_points = point_coords is not None and point_coords.dim() == 3
        batched = (box is not None and box.dim() == 2) or per_prompt_points
        points = labels = boxes = None
        if point_coords is not None:
            points = point_coords.to(device, torch.float32)
            # [1, prompts, points, 2]: [B, P, 2] is one point set per prompt, not B*P points for each
            points = points[None] if per_prompt_points else points.reshape(1, 1, -1, 2)
            if point_labels is None:
                point_labels = torch.ones(points.shape[1:3], dtype=torch.int32)
            labels = point_labels.to(device, torch.int32).reshape(points.shape[:3])
        if box is not None:
            boxes = box.to(device, torch.float32).reshape(1, -1, 4)
            if points is not None and points.shape[1] == 1 and boxes.shape[1] != 1:
                points, labels = (
                    points.expand(1, boxes.shape[1], -1, -1),
                    labels.expand(1, boxes.shape[1], -1),
                )
            elif points is not None and points.shape[1] != boxes.shape[1]:
                raise ValueError(
                    f"{points.shape[1]} point sets for {boxes.shape[1]} boxes: give one point set per box, "
                    "or one for all"
                )
        frame = self._frame
        low_res, iou, _, _ = run_sam_heads(
            self.tracker.sam,
            self._embeddings,
            frame.s0,
            frame.s1,
            points=points,
            labels=labels,
            boxes=boxes,
            multimask_output=multimask_output,
        )
        low_res, iou = low_res[0], iou[0]  # [B, K, 4g, 4g], [B, K]
        size = self.tracker.image_config.image_size
        masks = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False) > 0
        if not batched:
            return masks[0], iou[0], low_res[0]
        return masks, iou, low_res
