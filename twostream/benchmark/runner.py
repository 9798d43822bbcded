"""One benchmark run: options, the measurements in order, and the result the report is written from.

    >>> result = run_benchmark(BenchmarkOptions(ci=True))
    >>> print(format_report(result))

Order: inference (every model at every batch size), the training step of ``configs/quickstart.yaml``, the loader
with 0, 1 and 2 workers, the builder-alone table of ``benchmarks/graph_builder.py`` (its ``run``), and one image
explained by the quick-start model (:mod:`twostream.benchmark.explain`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from twostream.benchmark.explain import ExplainRow, bench_explain
from twostream.benchmark.inference import DEFAULT_MODELS, InferenceRow, ModelSpec, bench_inference
from twostream.benchmark.report import Target, evaluate_targets
from twostream.benchmark.store import StoreResult, bench_graphs_only_epoch, bench_store
from twostream.benchmark.training import (
    LoaderRow,
    TrainStepResult,
    bench_loader,
    bench_train_step,
    prepare_training_data,
)
from twostream.config import CONFIG_DIR

log = logging.getLogger(__name__)

__all__ = ["REPO", "BenchmarkOptions", "BenchmarkResult", "run_benchmark"]

REPO = Path(__file__).resolve().parents[2]  # the checkout: configs/ and benchmarks/ live beside the package
QUICK_SIZE = 128
CI_SIZE = 64
STORE_SIZE = 1_000_000  # graphs in the store section: Places365-Standard's 1.8 M training images, rounded down
CI_STORE_SIZE = 4_000


@dataclass
class BenchmarkOptions:
    """What to measure and how.

    Args:
        device: ``cpu`` or ``cuda`` (``cuda:N``).
        size: square image size for every model; ``None`` keeps each config's ``data.image_size`` (224; the quickstart
            128). Must be divisible by 32 (the UPSNet segmenter).
        quick: fewer iterations and 128 px unless ``size`` says otherwise.
        ci: 64 px, toy widths, timm test models, one or two iterations: a smoke run, not a measurement.
        batch_sizes: inference batch sizes.
        warmup, iters, min_iters, budget_s: see :func:`~twostream.benchmark.measure.time_calls`; ``budget_s`` is per
            model (the round-robin of end-to-end calls may take ``budget_s`` times the number of models).
        bf16: bf16 autocast. compile: ``torch.compile`` the dense modules (:func:`compile_dense`).
        workers: loader worker counts. loader_batches: timed batches per loader measurement.
        builder_table: also run ``benchmarks/graph_builder.py``'s ``run`` (when the checkout has it).
        store_size: graphs in the store section (default 1 M; 4,000 with ``ci``); store_reads: graphs read per
            access measurement.
        config_dir: where the YAML configs are. models: the inference rows. seed: weights, images and data.
        overrides: ``key=value`` config overrides for every inference model (what-ifs such as
            ``model.segmenter.deformable=false``).
    """

    device: str = "cpu"
    size: int | None = None
    quick: bool = False
    ci: bool = False
    batch_sizes: tuple[int, ...] = (1, 8)
    warmup: int = 1
    iters: int = 5
    min_iters: int = 3
    budget_s: float = 15.0
    bf16: bool = False
    compile: bool = False
    workers: tuple[int, ...] = (0, 1, 2)
    loader_batches: int = 10
    builder_table: bool = True
    config_dir: Path = CONFIG_DIR  # the shipped configs (the checkout's configs/ in a checkout)
    models: tuple[ModelSpec, ...] = DEFAULT_MODELS
    seed: int = 0
    overrides: tuple[str, ...] = ()
    store_size: int | None = None
    store_reads: int = 20_000

    def resolved(self) -> BenchmarkOptions:
        """The options with ``quick`` / ``ci`` applied and checked; raises ValueError naming a bad value."""
        import dataclasses

        opts = dataclasses.replace(self, config_dir=Path(self.config_dir))
        if opts.ci:
            opts = dataclasses.replace(opts, size=opts.size or CI_SIZE, warmup=1, iters=min(opts.iters, 2),
                                       min_iters=1, loader_batches=min(opts.loader_batches, 2))
        elif opts.quick:
            opts = dataclasses.replace(opts, size=opts.size or QUICK_SIZE, iters=min(opts.iters, 3), min_iters=2,
                                       loader_batches=min(opts.loader_batches, 6))
        if opts.compile:
            opts = dataclasses.replace(opts, warmup=max(opts.warmup, 2))  # the first call compiles
        if opts.store_size is None:
            opts = dataclasses.replace(opts, store_size=CI_STORE_SIZE if opts.ci else STORE_SIZE)
        if opts.ci:
            opts = dataclasses.replace(opts, store_reads=min(opts.store_reads, 1000))
        if opts.store_size < 100 or opts.store_reads < 50:
            raise ValueError(f"benchmark: --store-size must be at least 100 graphs (got {opts.store_size}) and "
                             f"store reads at least 50 (got {opts.store_reads})")
        if opts.size is not None and (opts.size <= 0 or opts.size % 32):
            raise ValueError(f"benchmark: --size {opts.size} must be a positive multiple of 32 (the segmenter's "
                             "pyramid goes to stride 32)")
        if any(b < 1 for b in opts.batch_sizes) or opts.iters < 1 or opts.warmup < 0:
            raise ValueError("benchmark: batch sizes and --iters must be at least 1, --warmup at least 0")
        if any(w < 0 for w in opts.workers):
            raise ValueError(f"benchmark: --workers must be >= 0, got {list(opts.workers)}")
        if not (opts.config_dir / "swin_gat.yaml").is_file():
            raise ValueError(f"benchmark: no configs in {opts.config_dir}; pass --config-dir pointing at the "
                             "repository's configs/ folder")
        device = torch.device(opts.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"benchmark: --device {opts.device} but no CUDA device is available; use --device cpu")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"benchmark: --device must be cpu or cuda[:N], got '{opts.device}'")
        return opts


@dataclass
class BenchmarkResult:
    """Everything one run measured, with the conditions it ran under."""

    options: BenchmarkOptions
    device: str
    threads: int
    interop_threads: int
    cpu_count: int | None
    load_start: tuple[float, float, float] | None
    load_end: tuple[float, float, float] | None
    memory_method: str
    inference: list[InferenceRow] = field(default_factory=list)
    train: TrainStepResult | None = None
    loader: list[LoaderRow] = field(default_factory=list)
    builder_table: str = ""
    explain: ExplainRow | None = None
    store: StoreResult | None = None
    targets: list[Target] = field(default_factory=list)

    @property
    def memory_title(self) -> str:
        return "peak CUDA mem (MiB)" if self.device.startswith("cuda") else "peak RSS growth (MiB)"

    def header_lines(self) -> list[str]:
        o = self.options
        sizes = sorted({r.image_size for r in self.inference})
        size_text = ", ".join(f"{h}x{w}" for h, w in sizes) or "—"
        load = "n/a"
        if self.load_start is not None and self.load_end is not None:
            load = f"{self.load_start[0]:.2f} at the start, {self.load_end[0]:.2f} at the end"
        lines = [
            f"device: {self.device}; torch {torch.__version__}; intra-op threads (torch.get_num_threads): "
            f"{self.threads}, inter-op: {self.interop_threads}; logical CPUs: {self.cpu_count}",
            f"load average (1 min): {load}",
            f"inference image size {size_text}; batch sizes {', '.join(map(str, o.batch_sizes))}; random weights "
            "(pretrained=false), uniform-noise images; "
            f"{'bf16 autocast' if o.bf16 else 'fp32'}{', torch.compile (dense modules)' if o.compile else ''}; "
            "torch.inference_mode, eval mode",
            f"timing: median of up to {o.iters} timed calls (at least {min(o.min_iters, o.iters)}; capped at about "
            f"{o.budget_s:.0f} s per measurement) after {o.warmup} warm-up call(s); end-to-end calls round-robin over "
            "the models",
            f"peak memory: {self.memory_method}, over one end-to-end call (the last warm-up call)",
        ]
        busy = max((self.load_start or (0.0,))[0], (self.load_end or (0.0,))[0])  # 1-minute load averages
        if not self.device.startswith("cuda") and self.cpu_count and busy > self.cpu_count and self.threads > 1:
            lines.append(f"the machine was busy (load {busy:.1f} on {self.cpu_count} CPUs): with {self.threads} "
                         "intra-op threads every parallel operation waits for a thread another process holds, so "
                         "stages made of many small operations (GNN, fusion) read slower than they run on an idle "
                         "machine; --threads 1 shows them without that wait")
        if o.overrides:
            lines.append(f"config overrides for every inference model: {' '.join(o.overrides)}")
        if o.ci:
            lines.append("**CI size**: toy widths and timm test models; these numbers say nothing about the real "
                         "models")
        return lines

    def inference_notes(self) -> list[str]:
        notes = ["img/s = images per second; (ms) = milliseconds per batch. Stages are timed each on its own inputs; "
                 "overhead = end to end minus the stage sum (Python glue, allocation, timing noise). "
                 "\"vs image-only\" = end-to-end latency over that of the image-only model with the same image "
                 "encoder at the same batch size, measured in the same rounds."]
        if any(r.reused for r in self.inference):
            notes.append("† measured once for all rows with an identical module (same config and weights) at this "
                         "batch size.")
        hires = {r.name: r for r in self.inference if r.name.endswith(":seg_hires")}
        for name, r in hires.items():
            base = name.rsplit(":", 1)[0]
            other = next((o for o in self.inference if o.name == base), None)
            notes.append(f"{name}: {base} with its segmenter at {r.segmenter_input} (the image encoder at "
                         f"{r.image_size[0]}x{r.image_size[1]}; images read at the segmenter's size and shrunk for "
                         f"the encoder), against {base}'s segmenter at "
                         f"{other.segmenter_input if other is not None else 'the image size'}: the cost of "
                         "segmenting at the segmenter's own resolution (docs/resolution.md).")
        if any(r.backbone is not None for r in self.inference):
            notes.append("With a shared backbone the segmenter column includes the backbone (its own time given as "
                         "\"backbone\") and the image-encoder column is the adapter on the backbone's C5 map.")
        return notes

    def loader_notes(self) -> list[str]:
        notes = ["Training batches from the engine's loader (synthetic ADE20K-format images at the training size, "
                 "training augmentation, scene graphs from a GraphStore), consumed by nothing but the loop; the "
                 "rate is steady state after the start-up batches. \"x training step rate\" = batches/s over the "
                 "quickstart model's optimizer steps/s on this device."]
        if not self.device.startswith("cuda"):
            notes.append("On a CPU the workers and the training step share the same cores; they are measured apart "
                         "here, as a GPU run would see them.")
        return notes


def _load_graph_builder_benchmark():
    """``benchmarks/graph_builder.py`` of the checkout as a module, or ``None`` (an installed package lacks it)."""
    path = REPO / "benchmarks" / "graph_builder.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("twostream_graph_builder_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _graph_builder_table(size: int, ci: bool) -> str:
    module = _load_graph_builder_benchmark()
    if module is None:
        return ""
    threads = torch.get_num_threads()
    try:  # its run() sets the thread count it is given; keep torch's
        rows = module.run(size=size, num_maps=2 if ci else 8, skimage_maps=1 if ci else 2, repeats=1 if ci else 2,
                          threads=threads, gpu_batch=8)
    finally:
        torch.set_num_threads(threads)
    return module.markdown_table(rows)


def _loadavg() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def run_benchmark(options: BenchmarkOptions, *, work_dir: str | Path | None = None,
                  sections: Sequence[str] = ("inference", "train", "loader", "builder", "store", "explain")
                  ) -> BenchmarkResult:
    """Run the benchmark ``options`` describe; generated data goes to ``work_dir`` (default: a temporary folder).

    ``sections`` picks parts of the run (``inference``, ``train``, ``loader``, ``builder``, ``store``, ``explain``);
    targets whose measurements were skipped read "not measured".
    """
    opts = options.resolved()
    device = torch.device(opts.device)
    if device.type == "cuda":
        name = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        name = f"cpu ({_cpu_model() or platform.processor() or platform.machine()})"
    result = BenchmarkResult(options=opts, device=name,
                             threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
                             cpu_count=os.cpu_count(), load_start=_loadavg(), load_end=None, memory_method="")
    if "inference" in sections:
        result.inference, result.memory_method = bench_inference(
            opts.models, opts.config_dir, device, batch_sizes=opts.batch_sizes, size=opts.size, ci=opts.ci,
            warmup=opts.warmup, iters=opts.iters, min_iters=opts.min_iters, budget_s=opts.budget_s, bf16=opts.bf16,
            compile=opts.compile, seed=opts.seed, overrides=opts.overrides)
    if "train" in sections or "loader" in sections:
        with tempfile.TemporaryDirectory(prefix="twostream-bench-") as tmp:
            root = Path(work_dir) if work_dir is not None else Path(tmp)
            cfg = prepare_training_data(root, opts.config_dir, size=opts.size, ci=opts.ci,
                                        loader_batches=opts.loader_batches, workers=opts.workers, seed=opts.seed,
                                        batch_size=8 if opts.ci else None)
            if "train" in sections:
                log.info("training step of quickstart")
                result.train = bench_train_step(cfg, device, warmup=opts.warmup, iters=opts.iters,
                                                min_iters=opts.min_iters, budget_s=opts.budget_s, bf16=opts.bf16,
                                                compile=opts.compile, seed=opts.seed)
            if "loader" in sections:
                for workers in opts.workers:
                    log.info("loader with %d workers", workers)
                    result.loader.append(bench_loader(cfg, workers, opts.loader_batches, seed=opts.seed))
    if "builder" in sections and opts.builder_table:
        log.info("graph builder alone")
        sizes = sorted({r.image_size[0] for r in result.inference}) or [opts.size or 224]
        result.builder_table = _graph_builder_table(sizes[-1], opts.ci)
    if "store" in sections:
        with tempfile.TemporaryDirectory(prefix="twostream-store-") as tmp:
            root = Path(work_dir) / "store" if work_dir is not None else Path(tmp)
            root.mkdir(parents=True, exist_ok=True)
            result.store = bench_store(root, size=opts.store_size, small=max(100, opts.store_size // 100),
                                       reads=opts.store_reads, build_graphs=2_000 if opts.ci else 20_000,
                                       budget_s=opts.budget_s * 2, seed=opts.seed)
            log.info("graphs-only epoch against the image-reading epoch")
            epoch = bench_graphs_only_epoch(root, opts.config_dir, size=opts.size, ci=opts.ci, seed=opts.seed,
                                            per_scene=4 if opts.ci else 16)
            result.store.epoch_items, result.store.epoch_graphs_only_s, result.store.epoch_images_s = epoch
    if "explain" in sections:
        log.info("one image explained by quickstart")
        result.explain = bench_explain(opts.config_dir, device, size=opts.size, ci=opts.ci, warmup=opts.warmup,
                                       iters=opts.iters, min_iters=opts.min_iters, budget_s=opts.budget_s,
                                       seed=opts.seed)
    result.load_end = _loadavg()
    result.memory_method = result.memory_method or "not measured (no inference run)"
    result.targets = evaluate_targets(result.inference, result.loader, result.train, result.store)
    return result


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
