"""`cnnctl shard pack`'s options as one typed tree, resolved as the training config is.

Precedence (lowest first): field defaults < ``--config FILE`` (a YAML mapping of these fields) <
``--set field=value`` < explicit flags and the SOURCE and DEST arguments; `config.resolve` applies
it, for this tree as for RunConfig. A field left at None means "the layout's own default" (png and
no resize for fashion-mnist, jpg at 256 otherwise; 1000 samples a shard), settled in one place:
`sharding.pack_options`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cnnctl.orchestrator.config import resolve


class ShardConfig(BaseModel):
    # a YAML or --set number is a string field's text (--set resize=256, shard_bytes: 500000)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)

    source: str = Field(description=(
        "'fashion-mnist'; a class-folder tree (train/<wnid>/*.JPEG); a flat validation folder; "
        "ILSVRC2012_img_train.tar or ILSVRC2012_img_val.tar; or an ImageNet root holding train and val in any of "
        "these forms."))
    dest: str = Field(description=(
        "Destination folder or fsspec URL (s3://bucket/path, gs://..., memory://...). pipe: and other shell URLs "
        "are refused."))
    splits: list[str] = Field(default_factory=list, description=(
        "Split name(s) to write. fashion-mnist: train and test; an ImageNet root: train and val; one folder or "
        "tar: train (val for validation layouts)."))
    layout: str = Field("auto", description=(
        "Source layout: auto, fashion-mnist, class-folders, val-flat, train-tar, val-tar or imagenet (a root with "
        "train and val)."))
    labels: str | None = Field(None, description=(
        "Validation labels: Kaggle's LOC_val_solution.csv or the devkit's ILSVRC2012_validation_ground_truth.txt "
        "(default: found next to the source)."))
    synsets: str | None = Field(None, description=(
        "ILSVRC2012_ID -> wnid map for the devkit ground truth: meta.mat or a text file of '<ID> <wnid>' lines "
        "(default: found next to the source)."))
    prefix: str | None = Field(None, description=(
        "Shard name prefix (default: the dataset's name: /data/imagenet/train and ILSVRC2012_img_train.tar give "
        "imagenet-train-000000.tar; fashion-mnist for fashion-mnist)."))
    image_format: str | None = Field(None, description=(
        "jpg (RGB baseline JPEG) or png (lossless). Default: png for fashion-mnist, jpg otherwise."))
    resize: str | None = Field(None, description=(
        "Shorter side in pixels, or 'none' to keep the size (and the original bytes of RGB baseline JPEGs). "
        "Default: none for fashion-mnist, 256 otherwise."))
    center_crop: bool = Field(False, description="Center-crop to a square after resizing (AlexNet's 256x256).")
    quality: int = Field(90, ge=1, le=100, description="JPEG quality when re-encoding.")
    shard_size: int | None = Field(None, ge=1, description=(
        "Samples per shard (default 1000 unless --shard-bytes is given; with both, the smaller)."))
    shard_bytes: str | None = Field(None, description=(
        "Target shard size, e.g. 256MB: samples per shard from a seeded sample's mean encoded size."))
    per_class_limit: int | None = Field(None, ge=1, description=(
        "Keep the first N images of each class (ImageNet-100-style subsets, quick tests)."))
    seed: int = Field(0, description=(
        "Seed of the permutation that assigns samples to shards (and of the statistics sample)."))
    workers: int = Field(1, ge=1, description="Local processes encoding shards.")
    address: str | None = Field(None, description=(
        "Write the shards as Ray tasks on this existing cluster ('auto', 'host:6379'); every node must reach "
        "SOURCE and DEST."))
    overwrite: bool = Field(False, description=(
        "Rebuild every shard, or resume: keep the shards an earlier run of the same command published."))
    max_errors: int = Field(0, ge=0, description=(
        "Rejected inputs tolerated (recorded in the manifest) before aborting without a manifest."))


def describe(field: str) -> str:
    """A field's description: the help of its `cnnctl shard pack` flag."""
    return ShardConfig.model_fields[field].description or ""


def resolve_shard(config_file: str | None = None, sets: list[str] | None = None,
                  flags: dict[str, Any] | None = None) -> ShardConfig:
    """defaults < --config < --set < flags, validated once (a ConfigError of one line per problem)."""
    return resolve(None, config_file, sets, flags, tree=ShardConfig)
