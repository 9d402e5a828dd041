"""Metrics and reports, independent of bags and of torch.

``records`` (the per-frame records everything is scored on), ``ground_truth`` (COCO-style
JSON keyed by bag stamps), ``masks`` (mask IoU), ``coco_ap`` (pycocotools COCOeval, segm),
``tracking`` (motmetrics MOTA/IDF1 with mask-IoU distance), ``scoring`` (all of them at once),
``stats`` (latency, instances over time, track lifetimes), ``plots`` and ``report``.
"""
