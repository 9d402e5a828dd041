"""Training inputs that used to be accepted silently or crash mid-run: refused up front, by name."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from training_fixtures import fill_tiny_feature_cache, write_datasets

from efficientsam3_ros.training.data import ConceptDataset, DataError


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return write_datasets(tmp_path_factory.mktemp("training-data"))


def _saco_with_image_ids(datasets, tmp_path, change) -> tuple:
    root = tmp_path / "saco"
    shutil.copytree(datasets["saco"], root)
    doc = json.loads((root / "annotations.json").read_text())
    for i, ann in enumerate(doc["annotations"]):
        ann["image_id"] = change(i, ann["image_id"])
    (root / "annotations.json").write_text(json.dumps(doc))
    return root, len(doc["annotations"])


def test_annotations_whose_image_id_matches_no_image_are_refused_or_warned(datasets, tmp_path, caplog):
    # every id written as a string (an exporter's int/str mismatch): every datapoint would be a negative
    root, n = _saco_with_image_ids(datasets, tmp_path / "all", lambda i, image_id: str(image_id))
    with pytest.raises(DataError, match=rf"none of the {n} annotations .* int/str id mismatch"):
        ConceptDataset(root, 56, style="saco")
    # one of them: it is ignored, with a warning that says how many and which
    root, n = _saco_with_image_ids(
        datasets, tmp_path / "one", lambda i, image_id: "x" if i == 0 else image_id
    )
    with caplog.at_level(logging.WARNING):
        ds = ConceptDataset(root, 56, style="saco")
    assert len(ds) > 0
    assert f"1 of {n} annotations" in caplog.text and "image_id 'x' (str)" in caplog.text


def test_a_damaged_feature_cache_shard_is_refused_when_the_cache_is_opened(datasets, tmp_path, one_thread):
    from efficientsam3_ros.training.distributed import DistContext
    from efficientsam3_ros.training.feature_cache import CacheError, FeatureCache, fill_cache

    folder = tmp_path / "cache"
    ds, keys, teacher, kwargs = fill_tiny_feature_cache(datasets["sa1b"], folder)
    shard = folder / "shard-000001.safetensors"
    intact = shard.read_bytes()
    shard.write_bytes(intact[:200])  # truncated after the fill (a full disk, a partial copy)
    with pytest.raises(CacheError, match="shard-000001.safetensors is damaged .*delete it to refill"):
        fill_cache(folder, ds, keys, teacher, DistContext(), **kwargs)
    with pytest.raises(CacheError, match="shard-000001.safetensors is damaged .*delete it to refill"):
        FeatureCache(folder)
    shard.unlink()
    with pytest.raises(CacheError, match="shard-000001.safetensors is missing"):
        FeatureCache(folder)
    fill_cache(folder, ds, keys, teacher, DistContext(), **kwargs)  # deleted: refilled
    assert shard.read_bytes() == intact
    cache = FeatureCache(folder)
    assert all(key in cache for key in keys)
