"""docs/scaling.md's projections and plot: AlexNet on 1x8, 4x8 and 8x8 H100s, per layout.

Inputs (every one stated in docs/scaling.md):
- compute: docs/training.md's H100 figure, 10,140 img/s at batch 128 (bench/gpu_step.py, bf16,
  channels_last, synthetic batches on the GPU), the same for alexnet-owt (0.714 GMACs per image
  against alexnet's 0.724); backward = 2/3 of a step;
- bytes: bench/comm.py's counts at K = 8 (docs/comm.json): what each rank sends per step inside a
  node, and the gradient bytes each all-reduce was called with;
- links: NVLink 450 GB/s per GPU and direction, 100 / 200 / 400 Gb/s per node between nodes, each at
  80 % in collectives; collectives across nodes are hierarchical (inside the node over NVLink, one
  2(N-1)/N x S all-reduce across the N nodes per S bytes of one replica's gradients).

Run: .venv/bin/python bench/scaling.py [--comm docs/comm.json] [--png docs/scaling.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMG_S, BATCH, BACKWARD = 10_140, 128, 2 / 3
NVLINK, PCIE, EFFICIENCY = 450e9, 25e9, 0.8  # bytes/s per GPU and direction: NVLink 4; PCIe 4.0 x16 (no NVLink)
LINKS_GBIT = (100, 200, 400)
NODES, PER_NODE = (1, 4, 8), 8
IMAGENET, EPOCHS = 1_281_167, 90
LAYOUTS = ("dp", "dp+bf16", "towers", "owt", "owt+bf16", "owt+amp")
NAMES = {"dp": "dp", "dp+bf16": "dp, bf16 gradients", "towers": "hybrid (towers mp=2 x dp)",
         "owt": "owt (K=8 per node) x dp",
         "owt+bf16": "owt x dp, bf16 gradients", "owt+amp": "owt x dp, bf16 gradients and activations"}
COMPRESSED = ("dp+bf16", "owt+bf16", "owt+amp")  # gradients through bf16_compress_hook


def measured(rows: list[dict], layout: str, k: int = PER_NODE) -> dict:
    """One node's figures: bytes each rank sends (exchanges, gradients) and its gradient payload."""
    r = next(r for r in rows if r["layout"] == layout and r["k"] == k)
    t = r["totals"]
    grad = t.get("all_reduce", {"sent": 0.0, "payload": 0})
    exch = sum(t[op]["sent"] for op in ("all_gather", "reduce_scatter", "all_to_all") if op in t)
    return {"exchange": exch, "grad_sent": grad["sent"], "grad_payload": grad["payload"]}


def replica_gradient_bytes(rows: list[dict], layout: str) -> float:
    """S: the bytes of one replica's gradients that cross the nodes in one all-reduce per step."""
    m = measured(rows, layout)
    if layout in ("dp", "dp+bf16"):
        return m["grad_payload"]
    if layout == "towers":
        return 2 * m["grad_payload"]  # each tower's half (with its copy of fc8), both all-reduced
    # owt: the conv part (+ fc8's bias), plus the FC slices, which together are one model's FC layers
    # (dp's payload less the conv part's), compressed alike by the bf16 hook
    dp = measured(rows, "dp")["grad_payload"]
    fc = dp - measured(rows, "owt")["grad_payload"]
    return m["grad_payload"] + (fc / 2 if layout in COMPRESSED else fc)


def step(rows: list[dict], layout: str, nodes: int, gbit: float, overlap: bool, in_node: float = NVLINK) -> float:
    """Seconds per step of one GPU."""
    m = measured(rows, layout)
    compute = BATCH / IMG_S / (2 if layout == "towers" else 1)  # a tower pair splits one batch's work
    exchange = m["exchange"] / (in_node * EFFICIENCY)  # activations: on the critical path
    grads = m["grad_sent"] / (in_node * EFFICIENCY)
    if nodes > 1:
        grads += 2 * (nodes - 1) / nodes * replica_gradient_bytes(rows, layout) / (gbit / 8 * 1e9 * EFFICIENCY)
    if overlap:  # DDP all-reduces gradients while backward computes the layers below
        return compute * (1 - BACKWARD) + exchange + max(compute * BACKWARD, grads)
    return compute + exchange + grads


def images_per_second(rows, layout, nodes, gbit, overlap, in_node: float = NVLINK) -> float:
    gpus = nodes * PER_NODE
    replicas = gpus // 2 if layout == "towers" else gpus  # batches of 128 per step
    return replicas * BATCH / step(rows, layout, nodes, gbit, overlap, in_node)


def pcie_table(rows: list[dict]) -> str:
    """One node of 8 GPUs on PCIe 4.0 only (no NVLink): the paper's setting, where OWT pays."""
    out = ["| layout (1x8, PCIe 4.0) | img/s, overlap | efficiency | img/s, no overlap | efficiency |",
           "|---|---|---|---|---|"]
    for layout in LAYOUTS:
        cells = [f"{ips:,.0f} | {ips / (PER_NODE * IMG_S):.0%}"
                 for ips in (images_per_second(rows, layout, 1, 0, o, PCIE) for o in (True, False))]
        out.append(f"| {NAMES[layout]} | {' | '.join(cells)} |")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    out = ["| layout | GPUs | link | img/s, overlap | efficiency | 90 epochs | img/s, no overlap | efficiency |",
           "|---|---|---|---|---|---|---|---|"]
    for layout in LAYOUTS:
        for nodes in NODES:
            for gbit in LINKS_GBIT if nodes > 1 else (None,):
                cells = []
                for overlap in (True, False):
                    ips = images_per_second(rows, layout, nodes, gbit or 0, overlap)
                    eff = ips / (nodes * PER_NODE * IMG_S)
                    cells.append(f"{ips:,.0f} | {eff:.0%}")
                    if overlap:
                        cells.append(f"{EPOCHS * IMAGENET / ips / 60:,.0f} min")
                link = f"{gbit} Gb/s" if gbit else "NVLink"
                out.append(f"| {NAMES[layout]} | {nodes}x{PER_NODE} | {link} | {' | '.join(cells)} |")
    return "\n".join(out)


def bytes_table(rows: list[dict]) -> str:
    out = ["| layout | sent per GPU per step in the node (MB) | one replica's gradients across nodes, S (MB) |",
           "|---|---|---|"]
    for layout in LAYOUTS:
        m = measured(rows, layout)
        out.append(f"| {NAMES[layout]} | {(m['exchange'] + m['grad_sent']) / 1e6:,.1f} | "
                   f"{replica_gradient_bytes(rows, layout) / 1e6:,.1f} |")
    return "\n".join(out)


def plot(rows: list[dict], png: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LINKS_GBIT), figsize=(15, 6), sharey=True)
    gpus = [n * PER_NODE for n in NODES]
    for ax, gbit in zip(axes, LINKS_GBIT):
        ax.plot(gpus, [g * IMG_S for g in gpus], color="black", lw=1, label="ideal (8 x 10,140 img/s per node)")
        for i, layout in enumerate(LAYOUTS):
            color = f"C{i}"
            for overlap, style in ((True, "-"), (False, "--")):
                ys = [images_per_second(rows, layout, n, gbit, overlap) for n in NODES]
                ax.plot(gpus, ys, style, color=color, marker="o", ms=3,
                        label=f"{NAMES[layout]}{'' if overlap else ', no overlap'}")
        ax.set_title(f"{gbit} Gb/s per node between nodes")
        ax.set_xlabel("H100 GPUs (nodes x 8)")
        ax.set_xticks(gpus)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("projected img/s (AlexNet, batch 128 per GPU)")
    axes[0].yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:,.0f}k"))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("AlexNet on H100s: projected throughput from bench/comm.py's counted bytes (bench/scaling.py)")
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comm", default=str(ROOT / "docs" / "comm.json"), help="bench/comm.py --json output")
    ap.add_argument("--png", default=str(ROOT / "docs" / "scaling.png"))
    args = ap.parse_args()
    rows = json.loads(Path(args.comm).read_text())
    print(bytes_table(rows), end="\n\n")
    print(table(rows), end="\n\n")
    print(pcie_table(rows))
    plot(rows, Path(args.png))
    print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
