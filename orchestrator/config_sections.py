"""The sections of cnnctl's config tree, `RunConfig`: every field with its type, bounds, default and
description, and the rules a single section can check. orchestrator/config.py resolves the tree
(precedence, cross-field rules); import it from there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from cnnctl.models.layout import Layout


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    root: str = Field("data/fashion-mnist", description="fsspec URL of the folder that holds the shards and manifests.")
    prefix: str = Field("fashion-mnist", description="Shard name prefix: shards are <prefix>-<split>-NNNNNN.tar.")
    train_split: str = Field("train", description="Split used for training.")
    val_split: str = Field("test", description="Split evaluated after every epoch (Fashion-MNIST has only train/test).")
    batch_size: int = Field(128, gt=0, description="Global batch size; each data-parallel rank takes batch_size / dp.")
    global_batch: int | None = Field(None, gt=0, description=(
        "Samples per optimiser step, fixed when the run starts (default batch_size): each rank accumulates "
        "gradients over global_batch / batch_size batches (a resume at a smaller dp keeps it; docs/resume.md)."))
    image_size: int = Field(28, gt=0, description="Side of the square crop fed to the model.")
    augment: Literal["none", "crop-flip", "alexnet", "vgg"] = Field("crop-flip", description=(
        "Train augmentation: none (centre crop); crop-flip (random crop of the zero-padded image, flip); alexnet "
        "(random image_size crop of the central square, flip, PCA lighting; AlexNet §4.1); vgg (scale jitter S in "
        "[scale_min, scale_max], random image_size crop, flip, RGB colour shift; VGG §3.1)."))
    pad: int = Field(2, ge=0, description="Zero padding (pixels) before the random crop of crop-flip.")
    scale_min: int = Field(256, gt=0, description=(
        "vgg: smallest shorter side S of the scale jitter (Smin); at least image_size."))
    scale_max: int = Field(512, gt=0, description=(
        "vgg: largest shorter side S of the scale jitter (Smax); scale_min = scale_max is single-scale training."))
    lighting_std: float = Field(0.1, ge=0, description=(
        "alexnet/vgg: sigma of the PCA lighting coefficients alpha_i ~ N(0, sigma), with the manifest's RGB "
        "eigen-decomposition; 0 turns it off."))
    mean: list[float] | None = Field(None, description=(
        "Per-channel mean on the 0-1 scale; None takes it from the manifest statistics."))
    std: list[float] | None = Field(None, description=(
        "Per-channel std on the 0-1 scale; None takes it from the manifest statistics."))
    mean_image: bool = Field(False, description=(
        "Subtract the training split's per-pixel mean image instead of the per-channel mean (AlexNet §2): the mean of "
        "every pixel of the images' central square, written by `cnnctl shard` beside the manifest (needs --resize). "
        "Each crop subtracts its own patch of it, mirrored with it. Needs augment alexnet or none."))
    limit: int | None = Field(None, gt=0, description=(
        "Use at most this many training samples per epoch (for quick runs and tests)."))
    loader_workers: int = Field(0, ge=0, description=(
        "DataLoader worker processes per training worker (0 = decode in the training process)."))
    shuffle_buffer: int = Field(2000, ge=0, description=(
        "Sample shuffle buffer per loader, on top of the per-epoch shard shuffle."))
    decoder: Literal["auto", "windowed", "whole", "device"] = Field("auto", description=(
        "JPEG decoding for crops: windowed (only the crop's window, shards/_jpegcrop.c), whole (the whole image, "
        "simplejpeg), or auto (whichever costs less CPU for this transform on this machine, measured once on the "
        "split's own images and cached in ~/.cache/cnnctl/decoders.json). The pixels are the same either way. "
        "device: the loader workers only read and batch the training JPEGs, which the training process decodes "
        "(on a GPU with NVIDIA nvImageCodec, the gpu extra; on the CPU with cnnctl's decoders)."))
    on_bad_sample: Literal["error", "skip"] = Field("error", description=(
        "A sample that fails to decode stops the run (error) or is counted and skipped (skip)."))

    @field_validator("mean_image")
    @classmethod
    def _mean_image_crops(cls, v: bool, info: ValidationInfo) -> bool:
        augment = info.data.get("augment")
        if v and augment not in ("alexnet", "none"):
            raise ValueError("a per-pixel mean image needs crops of the central square (augment alexnet or none), "
                             f"not augment {augment}")
        return v

    @field_validator("scale_max")
    @classmethod
    def _scale_range(cls, v: int, info: ValidationInfo) -> int:
        if v < info.data.get("scale_min", v):
            raise ValueError(f"scale_max {v} is below scale_min {info.data['scale_min']}")
        return v


class LRNConfig(Section):
    enabled: bool = Field(True, description="Use Local Response Normalization after conv1 and conv2.")
    k: float = Field(2.0, description="Additive constant k in the paper's formula.")
    n: int = Field(5, gt=0, description="Number of adjacent channels summed (odd; the window is centred).")
    alpha: float = Field(1e-4, gt=0, description=(
        "Paper's alpha, NOT divided by n (torch's local_response_norm divides it)."))
    beta: float = Field(0.75, gt=0, description="Exponent beta.")


class ModelConfig(Section):
    """A field left at None means "this model's own default" (the paper's), in a form that survives
    serialisation to Ray workers, Tune trials and checkpoints; a field the model does not take is an
    error on the driver (`check`)."""

    name: str = Field("alexnet-small", description="Model name from `cnnctl models`.")
    num_classes: int | None = Field(None, gt=1, description=(
        "Number of classes; None takes it from the training manifest."))
    towers: int | None = Field(None, ge=1, le=2, description=(
        "AlexNet towers (1 or 2): grouped conv2/conv4/conv5 when 2. None: the model's own (2 for alexnet and "
        "alexnet-small, 1 for alexnet-owt). Not for VGG."))
    width: float | None = Field(None, gt=0, description=(
        "Channel multiplier of every conv and hidden FC layer, for rehearsing a recipe at reduced size. None: 1 (the "
        "paper's widths)."))
    dropout: float | None = Field(None, ge=0, lt=1, description="Dropout on fc6 and fc7. None: the model's own (0.5).")
    lrn: LRNConfig | None = Field(None, description=(
        "Local Response Normalization settings; setting any key sets them all (unset keys take the paper's values). "
        "None: the model's own (the paper's LRN for alexnet, alexnet-small and vgg-a-lrn; none for alexnet-owt). Not "
        "for VGG columns other than A-LRN, which have no LRN layer."))
    init: Literal["paper", "kaiming", "glorot", "torch"] | None = Field(None, description=(
        "Weight init. None: the model's own (AlexNet §5 N(0, 0.01) with biases 1 for alexnet; kaiming for "
        "alexnet-small; torch's for alexnet-owt; VGG §3.1 N(0, 0.01)). AlexNet takes paper, kaiming, torch; VGG "
        "paper, glorot, kaiming."))
    init_from: str | None = Field(None, description=(
        "Run or checkpoint that initialises the model before training; how is init_mode."))
    init_mode: Literal["auto", "vgg-a", "matching"] = Field("auto", description=(
        "How init_from copies weights. vgg-a: VGG §3.1, a trained VGG-A's first four convs and three FC layers go to "
        "the same places in B-E (the rest stays as `init` draws it). matching: every tensor whose name and shape "
        "match (fine-tuning, e.g. a new classifier or S=384 -> [256, 512]). auto: vgg-a for VGG B-E started from a "
        "VGG-A, matching otherwise."))

    def overrides(self) -> dict:
        """The fields the user set, as models.build's overrides (`lrn` as a dict, or None for off)."""
        out = {k: getattr(self, k) for k in ("towers", "width", "dropout", "init") if getattr(self, k) is not None}
        if self.lrn is not None:
            out["lrn"] = self.lrn.model_dump(exclude={"enabled"}) if self.lrn.enabled else None
        return out


class OptimConfig(Section):
    lr: float = Field(0.01, gt=0, description="Base learning rate (for the reference batch when scale_lr=linear).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    nesterov: bool = Field(False, description="Nesterov momentum.")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay, as in the papers.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    scale_lr: Literal["none", "linear"] = Field("none", description=(
        "linear: lr = lr * batch_size / reference_batch (Goyal et al. 2017)."))
    reference_batch: int = Field(256, gt=0, description="Batch size the base lr refers to under scale_lr=linear.")


class ScheduleConfig(Section):
    kind: Literal["constant", "step", "cosine", "onecycle", "plateau"] = Field("cosine", description=(
        "Learning-rate schedule: constant, step, cosine, onecycle (linear decay), or plateau (÷10 when val_top1 stops "
        "improving, the papers' rule)."))
    epochs: int = Field(10, gt=0, description="Number of training epochs.")
    warmup_epochs: float = Field(0.0, ge=0, description="Linear warm-up from lr/100 over this many epochs.")
    step_epochs: int = Field(30, gt=0, description="step: divide lr by `gamma` every this many epochs.")
    gamma: float = Field(0.1, gt=0, le=1, description="step: the factor applied every step_epochs.")
    patience: int = Field(2, ge=0, description="plateau: epochs without a val_top1 gain before lr is divided by 10.")
    max_drops: int = Field(3, ge=0, description="plateau: at most this many ÷10 drops (3 in both papers).")
    final_lr_fraction: float = Field(0.0, ge=0, le=1, description=(
        "cosine/onecycle: the lr at the end, as a fraction of the peak."))


class ParallelConfig(Section):
    nodes: int = Field(1, ge=1, description=(
        "Ray nodes the workers spread across (an elastic run: the most, and in a worker the nodes it trains on now)."))
    min_nodes: int | None = Field(None, ge=1, description=(
        "Elastic (--nodes MIN-MAX): the fewest nodes the run trains on; a node lost or regained resizes it by whole "
        "nodes from its newest checkpoint (docs/resume.md). None: always parallel.nodes, as placed at the start."))
    resize_check_s: float = Field(60.0, gt=0, description="Elastic: how often Ray Train looks for returned nodes.")
    node_loss_settle_s: float = Field(20.0, ge=0, description=(
        "Elastic: after the workers fail, how long to wait before sizing the restart, so a lost node is marked dead "
        "first (Ray's health checks take ~15 s by default; a restart sized before waits a minute for its workers)."))
    workers_per_node: int = Field(2, ge=1, description="Ray Train workers per node.")
    mp: int = Field(1, ge=1, le=2, description=(
        "Tower (model) parallel degree: 2 splits AlexNet's towers over a rank pair."))
    fc: Literal["data", "model"] = Field("data", description=(
        "The FC layers: data (replicated on every rank, like the convs) or model (Krizhevsky 2014's one weird trick: "
        "each rank of a group of fc_group ranks holds a slice of fc6/fc7/fc8 and computes it for the whole group's "
        "batch; the convs stay data parallel). model needs a one-tower AlexNet and mp=1."))
    fc_group: int | None = Field(None, ge=1, description=(
        "fc=model: the ranks K of one group (a slice of the FC layers each; groups are data parallel to each other). "
        "None: workers_per_node, one group per node. K must divide the world and the FC width."))
    grad_compression: Literal["none", "bf16"] = Field("none", description=(
        "Gradient all-reduce through torch's DDP communication hooks: none (fp32) or bf16 (bf16_compress_hook: half "
        "the bytes, gradients rounded to bf16 on the wire)."))
    bucket_mb: float = Field(25.0, gt=0, description=(
        "DDP bucket size in MB (bucket_cap_mb): gradients are all-reduced in buckets of this size as backward "
        "produces them."))
    gpus: bool = Field(False, description="One GPU per worker and the NCCL backend; otherwise CPU and gloo.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved for each worker.")
    threads_per_worker: int = Field(1, ge=1, description="torch intra-op threads in each worker.")
    channels_last: bool = Field(True, description=(
        "Run the model and its inputs in channels_last memory format (faster convolutions and pooling on CPU and "
        "GPU)."))
    compile: bool = Field(False, description=(
        "torch.compile the model (inductor) after the tower/FC split: a plain model whole, a tower pair between its "
        "crossings, OWT's conv part; the exchanges stay eager, checkpoints canonical, dropout as uncompiled. The "
        "first steps pay the compilation (a minute or more)."))
    precision: Literal["fp32", "bf16"] = Field("fp32", description=(
        "fp32, or bf16 autocast for the forward pass and loss (weights, gradients and the optimizer stay fp32; LRN "
        "computes in fp32). Meant for GPUs: on CPU, bf16 convolutions are slower."))
    address: str | None = Field(None, description="Ray cluster address; None starts a local Ray for the run.")

    @property
    def layout(self) -> Layout:
        """The run's layout (models/layout.py): sizes, ranks and every rule about them."""
        return Layout(self.nodes, self.workers_per_node, self.mp,
                      (self.fc_group or self.workers_per_node) if self.fc == "model" else None)

    @property
    def elastic(self) -> bool:
        return self.min_nodes is not None

    @property
    def world(self) -> int:
        """The layout's world (nodes x workers_per_node)."""
        return self.layout.world

    @property
    def dp(self) -> int:
        """The layout's data-parallel replicas."""
        return self.layout.dp

    def shape(self) -> str:
        """The cluster shape in one line, as `cnnctl train` prints it."""
        elastic = f"elastic over {self.min_nodes} to {self.nodes} nodes, at most " if self.elastic else ""
        gpu = " + 1 GPU" if self.gpus else ""
        return f"{elastic}{self.layout.describe()}, {self.cpus_per_worker:g} CPU{gpu} per worker"


def folder_name(v: str) -> str:
    """A run or sweep name is one folder under run.storage: the pattern keeps out `/`, control
    characters and the empty name; `.` and `..` (any name of dots only) would be the storage folder
    itself or the one above it."""
    if not v.strip("."):
        raise ValueError("a name of dots only is the storage folder itself (.) or the one above it (..); "
                         "use letters, digits, _ . -")
    return v


class RunSection(Section):
    name: str = Field("demo-fashion", pattern=r"^[A-Za-z0-9_.-]+$", description=(
        "Run name; rerunning the same name resumes it."))
    storage: str = Field("runs", description="fsspec URL (or local folder) under which runs are stored.")
    seed: int = Field(0, description="Seed of model init, data order and augmentation.")
    max_failures: int = Field(2, ge=-1, description=(
        "Worker failures Ray Train recovers from (from the newest checkpoint)."))
    keep_checkpoints: int = Field(2, ge=1, description=(
        "Newest checkpoints kept, step and end-of-epoch alike (an end-of-epoch checkpoint goes once this many newer "
        "ones exist)."))
    checkpoint_every_steps: int | None = Field(None, ge=1, description=(
        "Also checkpoint every this many training steps, mid-epoch: a run killed anywhere resumes at its last step "
        "checkpoint exactly (same data order, same weights as never killed). None: at the end of each epoch only."))
    checkpoint_minutes: float | None = Field(None, gt=0, description=(
        "Also checkpoint mid-epoch once this many minutes have passed since the last checkpoint (checked every 20 "
        "steps). Combines with checkpoint_every_steps."))
    checkpoint_upload: Literal["async", "sync"] = Field("async", description=(
        "async: rank 0 writes the checkpoint locally, then trains on while Ray Train uploads it to run.storage in the "
        "background; sync: training waits for the upload."))
    log_every: int = Field(50, ge=1, description="Print the training loss every this many steps (rank 0).")
    tracker: Literal["none", "mlflow", "wandb"] = Field("none", description=(
        "Experiment tracker that `cnnctl train` and each `cnnctl tune` trial also log to: the resolved config, each "
        "epoch's rank-0 metrics and the final checkpoint's location (needs the extra `track`). wandb runs offline "
        "only (files to `wandb sync` later). A tracker that cannot be reached is one warning line; training goes on."))
    tracker_uri: str | None = Field(None, description=(
        "mlflow: the tracking URI (http://host:5000, a local folder, databricks); None: MLflow's own default "
        "(MLFLOW_TRACKING_URI, else ./mlruns). wandb: the local folder for the offline runs; None: the run folder."))
    tracker_experiment: str = Field("cnnctl", min_length=1, description=(
        "The experiment (mlflow; created when missing) or project (wandb) the run is logged under."))

    _name = field_validator("name")(classmethod(lambda cls, v: folder_name(v)))
