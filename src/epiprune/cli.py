"""Command line: `epiprune train` (more subcommands follow). Bad input exits with code 2 and one line."""

from __future__ import annotations

import argparse
import sys

from .data import DATASETS
from .errors import DistributedError, EpipruneError
from .importance import IMPORTANCES
from .indicator import DEFAULT_THRESHOLDS, DEFAULT_WINDOW, EARLYBIRD_QUEUE, EPI_AVERAGES, INDICATORS
from .latency import AMP_DTYPES, TARGETS
from .models import MODELS, is_import_path
from .models.user import parse_layer_names, parse_model_kwargs


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, like our own errors
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option shows its default once: appended unless its help already says "(default ...".
    Switches (store_true) read "(default: off)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="epiprune", description="Prune CNNs structurally during training, at the epoch the "
                     "Early Pruning Indicator picks (Shen et al., CVPR 2022).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train, prune when EPI triggers, train the pruned network to the end",
                       formatter_class=_Help)
    _add_model_options(t)
    t.add_argument("--data", default="builtin", help=f"dataset: {', '.join(DATASETS)} (builtin: a Fashion-MNIST "
                   "subset shipped with epiprune, 10k train / 2k val)")
    t.add_argument("--data-dir", default=None, help="folder of the dataset's files (only with a --data other than "
                   "builtin; fashion-mnist also finds Debian's dataset-fashion-mnist) (default: none)")
    t.add_argument("--image-size", type=int, default=32, help="image side for --data imagefolder (pixels)")
    t.add_argument("--train-subset", type=int, default=None,
                   help="use at most this many training images, drawn at random (default: all)")
    t.add_argument("--val-subset", type=int, default=None,
                   help="use at most this many validation images, drawn at random (default: all)")
    t.add_argument("--epochs", type=int, default=15, help="epochs of the whole schedule (dense + pruned)")
    t.add_argument("--batch-size", type=int, default=128, help="images per step (under torchrun: the global "
                   "batch, split over the ranks)")
    t.add_argument("--lr", type=float, default=0.1, help="peak learning rate of SGD (momentum 0.9, Nesterov), "
                   "cosine-annealed per step over the whole schedule")
    t.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="ramp the LR up linearly over this many epochs first (1 helps ResNet-56 at lr 0.1)")
    t.add_argument("--weight-decay", type=float, default=5e-4, help="on conv/linear weights, not on BN/biases")
    t.add_argument("--budget", default="flops:0.5", help="what to keep: flops:F, params:F or latency:F (of the "
                   "dense model's step time measured on this device), 0 < F < 1")
    t.add_argument("--importance", default="taylor", choices=IMPORTANCES,
                   help="channel importance: first-order Taylor (gradients), group L2 weight magnitude, BN |gamma| "
                   "(network slimming), or random")
    t.add_argument("--indicator", default="epi", choices=INDICATORS,
                   help="when to prune: EPI; earlybird (You et al. 2020 as published: BN |gamma| channel masks, a "
                   "queue of --earlybird-queue distances all < epsilon = 1 - threshold, default 0.1; use it with "
                   "--importance bn --bn-l1 1e-4); earlybird-budget (masks of the budget's sub-network over the EPI "
                   "window, distances <= epsilon); none (dense training, EPI still tracked)")
    t.add_argument("--epi-window", type=int, default=DEFAULT_WINDOW, help="r: earlier epochs EPI compares with")
    t.add_argument("--epi-threshold", type=float, default=None,
                   help=f"tau: prune when EPI >= tau (default {DEFAULT_THRESHOLDS['taylor']} for taylor, "
                   f"{DEFAULT_THRESHOLDS['magnitude']} for magnitude, the paper's values)")
    t.add_argument("--epi-average", default="layer", choices=EPI_AVERAGES,
                   help="EPI's mean of layer distances: over layers (the paper: a channel group spanning k conv/"
                   "linear layers counts k times) or over channel groups (each once; epiprune before 2026-11-28)")
    t.add_argument("--epi-peak", type=int, default=0, help="also require EPI to exceed each of its last N values "
                   "(the paper's peak condition; 0: off)")
    t.add_argument("--epi-smooth", type=int, default=1, help="compare the mean of the last N EPI values with tau "
                   "(1: EPI itself)")
    t.add_argument("--earlybird-queue", type=int, default=EARLYBIRD_QUEUE,
                   help="--indicator earlybird: successive mask distances that must all be below epsilon")
    t.add_argument("--min-dense-epochs", type=int, default=None, help="never prune earlier (default: window+1)")
    t.add_argument("--max-dense-epochs", type=int, default=None,
                   help="prune at this epoch anyway if EPI has not triggered (default: half the epochs)")
    t.add_argument("--prune-at", type=int, default=None,
                   help="ignore EPI: prune after exactly this many dense epochs (0: at initialisation) (default: none, "
                   "--indicator decides)")
    t.add_argument("--channel-multiple", type=int, default=1,
                   help="keep a multiple of this many channels per layer (8: faster CPU/GPU kernels, coarser budget)")
    t.add_argument("--finetune-epochs", type=int, default=0,
                   help="extra epochs after --epochs at 0.1x the LR (train-prune-fine-tune with --prune-at EPOCHS)")
    t.add_argument("--init-batches", type=int, default=10,
                   help="with --prune-at 0 and taylor: batches of gradients used to rank channels at initialisation")
    t.add_argument("--bn-l1", type=float, default=0.0, help="L1 penalty on BN scales while dense (network "
                   "slimming; Early-Bird uses 1e-4)")
    t.add_argument("--holdout", type=int, default=0, help="hold this many training images out as the validation "
                   "split; the dataset's own validation split becomes a test split, evaluated once at the end "
                   "(--val-subset then sizes it) (0: off)")
    t.add_argument("--data-seed", type=int, default=None, help="seeds the draw of --train-subset, --val-subset and "
                   "--holdout, so that seeds can share one data subset (default: --seed)")
    t.add_argument("--record-scores", action="store_true", help="write scores.jsonl: the importance of every dense "
                   "epoch (for --branch-from and trigger studies)")
    t.add_argument("--probe-every", type=int, default=0, help="with --record-scores: also record the Taylor scores "
                   "of every window of N steps (0: off)")
    t.add_argument("--keep-checkpoints", default=None, metavar="EPOCHS",
                   help="keep the checkpoints of these epochs in checkpoints/epoch<k>.pt, e.g. 1-6,12 (default: none)")
    t.add_argument("--branch-from", default=None, metavar="DIR",
                   help="start from the dense run in DIR (made with --record-scores --keep-checkpoints): replay its "
                   "scores through this run's policy and continue from the epoch it prunes (default: none)")
    _add_latency_options(t)
    t.add_argument("--latency-table", default=None, metavar="PATH",
                   help="latency budget: the table file to reuse or build (default: a cache file per model, device "
                   "and settings under $EPIPRUNE_CACHE, else ~/.cache/epiprune)")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the model (compiled again after the prune; latency tables stay eager)")
    t.add_argument("--seed", type=int, default=0, help="seeds initialisation, data order and augmentation "
                   "(runs on the CPU are bit-identical for one seed)")
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: this rank's GPU if CUDA is available, else the CPU")
    t.add_argument("--dist-timeout", type=float, default=600.0,
                   help="under torchrun: seconds a collective may wait for the other ranks before failing")
    t.add_argument("--out", default="runs/train", help="output folder (refused if it holds a run, see --force)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (the per-epoch lines stay)")
    t.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR from its last checkpoint, with its own settings (only "
                   "--no-progress may be added) (default: none, a new run)")
    t.add_argument("--force", action="store_true",
                   help="replace the run already in --out (its files are kept until the new run's first checkpoint)")
    c = sub.add_parser("compare", help="run every pruning method (dense, prune-at-init, train-prune-fine-tune, "
                       "fixed-epoch grid = oracle, Early-Bird, EPI) and tabulate accuracy and training cost",
                       formatter_class=_Help)
    _add_model_options(c)
    c.add_argument("--data", default="builtin", help=f"dataset: {', '.join(DATASETS)}")
    c.add_argument("--data-dir", default=None, help="folder of the dataset's files, as for train (default: none)")
    c.add_argument("--train-subset", type=int, default=None,
                   help="at most this many training images in every run (default: all)")
    c.add_argument("--val-subset", type=int, default=None,
                   help="at most this many validation images in every run (default: all)")
    c.add_argument("--epochs", type=int, default=12, help="epochs of every run's schedule (at least --epi-window + 2)")
    c.add_argument("--batch-size", type=int, default=128, help="images per step of every run")
    c.add_argument("--lr", type=float, default=0.1, help="peak learning rate of every run (cosine schedule)")
    c.add_argument("--warmup-epochs", type=float, default=0.0, help="linear LR warm-up of every run")
    c.add_argument("--budget", default="flops:0.5", help="what every pruned run keeps: flops:F, params:F or latency:F "
                   "(of the dense model's measured training step), 0 < F < 1")
    c.add_argument("--epi-window", type=int, default=DEFAULT_WINDOW,
                   help="r of the EPI and Early-Bird runs (their fallback epoch is train's default)")
    c.add_argument("--grid", default=None, help="fixed prune epochs, e.g. 1,2,3 or 1-6 (default: 1..epochs/2)")
    c.add_argument("--finetune-epochs", type=int, default=None, help="fine-tune epochs of train-prune-fine-tune "
                   "(default: epochs/4)")
    c.add_argument("--seeds", default="0", help="comma-separated seeds; mean and spread are reported")
    c.add_argument("--methods", default="dense,plain,init,tpf,fixed,earlybird,epi",
                   help="which method families to run, comma-separated")
    c.add_argument("--jobs", type=int, default=1, help="runs in parallel (threads are split between them)")
    c.add_argument("--out", default="runs/compare", help="output folder: the table, the plots, and runs/<method>/"
                   "seed<k>/ for every run")
    c.add_argument("--force", action="store_true", help="rerun methods whose results already exist")
    e = sub.add_parser("export", help="export a run's (pruned) model for use without epiprune", formatter_class=_Help)
    e.add_argument("run_dir", help="output folder of `epiprune train`")
    e.add_argument("--format", default="torchscript", choices=("torchscript", "export", "onnx", "safetensors"),
                   help="torchscript (torch.jit.load), export (torch.export .pt2: torch.export.load), onnx (needs "
                   "onnx + onnxscript), or safetensors with the architecture in its metadata (epiprune.load_pruned)")
    e.add_argument("--out", default=None, help="file to write (default: RUN_DIR/model_export.<format suffix>)")
    e.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                   help="for a run of your own network: its factory, imported to build the dense network that the "
                   "run's surgery and weights are applied to (epiprune never imports a module named in a saved "
                   "file) (default: none, the run's registry model)")
    e.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="keyword arguments of --model's factory (default: those recorded in the run)")

    lt = sub.add_parser("latency-table", help="measure a model's per-layer latency table on this device (what "
                        "`train --budget latency:F` uses; train builds it itself when missing)",
                        formatter_class=_Help)
    lt.add_argument("--model", default="resnet20", help=f"network: {', '.join(MODELS)}")
    lt.add_argument("--input-shape", default="1,28,28", help="one sample's C,H,W (built-in data: 1,28,28)")
    lt.add_argument("--num-classes", type=int, default=10, help="outputs of the classifier")
    lt.add_argument("--batch", "--batch-size", dest="batch_size", type=int, default=128,
                    help="samples per timed training batch (target train)")
    _add_latency_options(lt)
    lt.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to time")
    lt.add_argument("--out", default=None, metavar="PATH",
                    help="file to write (default: the cache file that train looks for with the same settings)")
    lt.add_argument("--no-progress", action="store_true", help="no progress bar")

    r = sub.add_parser("report", help="tables and plots again from a train or compare folder, without training "
                                      "(also while a compare grid is still running)", formatter_class=_Help)
    r.add_argument("folder", help="output folder of `epiprune train` or `epiprune compare`")
    p = sub.add_parser("predict", help="print the top classes for image files: check that a trained or exported "
                       "model works as it is", formatter_class=_Help)
    p.add_argument("model", help="a run folder of `epiprune train`, or a file of `epiprune export` (.safetensors, "
                   ".pt, .pt2, .onnx)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (resized and converted like training's)")
    p.add_argument("--top", type=int, default=3, help="classes shown per image, most likely first")
    return parser


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """The network: a registry name or the user's own factory, its arguments, and layers never to prune."""
    p.add_argument("--model", default="resnet20", help=f"network: {', '.join(MODELS)}, or your own as "
                   "package.module:factory (a function or nn.Module class returning it; called with num_classes and "
                   "in_channels if it takes them; the current folder is searched first)")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="keyword arguments of your --model factory as a JSON object, e.g. '{\"width\": 32}' "
                   "(default: none)")
    p.add_argument("--ignore-layers", default=None, metavar="NAMES",
                   help="comma-separated module names (as in model.named_modules()) whose output channels are "
                   "never pruned; a container stands for its convs and linear layers (default: none; the "
                   "classifier is always kept)")


def _add_latency_options(p: argparse.ArgumentParser) -> None:
    """What a latency table times: shared by `train` and `latency-table`, so a table built by one fits the other."""
    p.add_argument("--latency-target", default="train", choices=TARGETS,
                   help="latency budget: time a training step (forward + backward + SGD step, at the batch size) "
                   "or inference (forward only, at --latency-batch)")
    p.add_argument("--latency-batch", type=int, default=None,
                   help="batch size the latency table times (default: the training batch size, --batch-size)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory format for training and for the latency table")
    p.add_argument("--amp", default="none", choices=tuple(AMP_DTYPES),
                   help="autocast dtype of the forward pass (fp16 adds loss scaling); the latency table matches it")


def _int_list(text: str, what: str) -> list[int]:
    """Parse `--seeds` / `--grid` text: comma-separated integers >= 0 and ranges lo-hi (lo <= hi), each once."""
    values: list[int] = []
    accepted = "accepted: integers >= 0 like 1,2,5 or 1-6, each once"
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise EpipruneError(f"bad --{what} {text!r} ({accepted})") from None
        if last < first:
            raise EpipruneError(f"bad --{what} {text!r}: {part} is an empty range ({accepted})")
        values += range(first, last + 1)
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise EpipruneError(f"bad --{what} {text!r} ({accepted})")
    return values


def _given_options(argv: list[str], command: str) -> list[str]:
    """The options of `command` that argv sets explicitly (first spelling of each), in the parser's order."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    return [a.option_strings[0] for a in sub._actions if a.option_strings and a.dest in given]


def _compare(args: argparse.Namespace) -> None:
    from .compare import CompareConfig, compare

    cfg = CompareConfig(model=args.model, model_kwargs=parse_model_kwargs(args.model_kwargs),
                        ignore_layers=parse_layer_names(args.ignore_layers), data=args.data, data_dir=args.data_dir,
                        train_subset=args.train_subset,
                        val_subset=args.val_subset, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        warmup_epochs=args.warmup_epochs, budget=args.budget, epi_window=args.epi_window,
                        grid=_int_list(args.grid, "grid") if args.grid else None,
                        finetune_epochs=args.finetune_epochs, seeds=_int_list(args.seeds, "seeds"),
                        families=[m.strip() for m in args.methods.split(",")], jobs=args.jobs, out=args.out,
                        force=args.force)
    compare(cfg)
    print(f"table and plots in {args.out}/: compare.md compare.json accuracy_vs_cost.png "
          "accuracy_vs_prune_epoch.png epi_curve.png widths_heatmap.png")


def _export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .export import export_run
    from .models import make_model
    from .serialization import read_spec

    dense = None
    if args.model is not None or args.model_kwargs is not None:
        if args.model is None:
            raise EpipruneError("--model-kwargs is given without --model (accepted: --model package.module:factory "
                                "with it)")
        spec, _ = read_spec(Path(args.run_dir))
        if args.model != spec.get("model"):
            sys.stderr.write(f"warning: --model {args.model} is not the run's recorded model {spec.get('model')!r}; "
                             "its weights must fit it\n")
        kwargs = parse_model_kwargs(args.model_kwargs) if args.model_kwargs is not None else \
            spec.get("model_kwargs") or {}
        try:
            size, in_channels, num_classes = tuple(spec["input_size"]), spec["in_channels"], spec["num_classes"]
        except (KeyError, TypeError) as e:
            raise EpipruneError(f"bad architecture spec in {args.run_dir} ({e})") from None
        dense = make_model(args.model, in_channels, num_classes, kwargs, size)
    path = export_run(args.run_dir, args.format, args.out, model=dense)
    print(f"wrote {path}")


def _predict(args: argparse.Namespace) -> None:
    from .predict import predict

    for image, top in zip(args.images, predict(args.model, args.images, args.top), strict=True):
        print(f"{image}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in top))


def _train(args: argparse.Namespace, argv: list[str]) -> None:
    from .runfolder import RunFolder
    from .trainer import TrainConfig, train

    if args.resume is not None:
        # a run of the user's own network needs its factory named again (a saved file never makes epiprune import)
        allowed = ("--resume", "--no-progress", *(("--model",) if is_import_path(args.model) else ()))
        ignored = [o for o in _given_options(argv, "train") if o not in allowed]
        if ignored:
            raise EpipruneError(f"{', '.join(ignored)} cannot be changed with --resume: the run continues with its "
                                "own settings (accepted with --resume: --no-progress, and --model MODULE:FACTORY "
                                "for a run of your own network; or a new run with --out and --force)")

    cfg = TrainConfig(model=args.model, model_kwargs=parse_model_kwargs(args.model_kwargs),
                      ignore_layers=parse_layer_names(args.ignore_layers), data=args.data, data_dir=args.data_dir,
                      image_size=args.image_size,
                      train_subset=args.train_subset, val_subset=args.val_subset, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, budget=args.budget,
                      importance=args.importance, epi_window=args.epi_window, epi_threshold=args.epi_threshold,
                      min_dense_epochs=args.min_dense_epochs, max_dense_epochs=args.max_dense_epochs,
                      prune_at=args.prune_at, indicator=args.indicator, finetune_epochs=args.finetune_epochs,
                      warmup_epochs=args.warmup_epochs, channel_multiple=args.channel_multiple,
                      init_batches=args.init_batches, seed=args.seed, device=args.device,
                      dist_timeout=args.dist_timeout, out=args.out, progress=not args.no_progress,
                      latency_target=args.latency_target, latency_batch=args.latency_batch,
                      latency_table=args.latency_table, channels_last=args.channels_last, amp=args.amp,
                      compile=args.compile, epi_average=args.epi_average, epi_peak=args.epi_peak,
                      epi_smooth=args.epi_smooth, earlybird_queue=args.earlybird_queue, bn_l1=args.bn_l1,
                      holdout=args.holdout, data_seed=args.data_seed, record_scores=args.record_scores,
                      probe_every=args.probe_every,
                      keep_checkpoints=None if args.keep_checkpoints is None else _int_list(args.keep_checkpoints,
                                                                                            "keep-checkpoints"),
                      branch_from=args.branch_from)
    if args.resume is not None:
        cfg.out = args.resume
    args.run_folder = RunFolder(cfg.out, resume=args.resume is not None, force=args.force)
    result = train(cfg, resume=args.resume is not None, folder=args.run_folder)
    from . import distributed

    if not distributed.is_main():
        return
    s = result.summary
    when = "never" if s["prune_epoch"] is None else f"after epoch {s['prune_epoch']} ({s['trigger']})"
    print(f"pruned {when}; final val top-1 {100 * s['final_val_top1']:.2f}%")
    print(f"FLOPs {s['dense_flops'] / 1e6:.2f}M -> {s['final_flops'] / 1e6:.2f}M ({100 * s['flops_ratio']:.1f}%), "
          f"params {s['dense_params'] / 1e6:.3f}M -> {s['final_params'] / 1e6:.3f}M ({100 * s['params_ratio']:.1f}%)")
    print(f"training cost {s['train_flops_total'] / 1e12:.3f} TFLOPs ({100 * s['train_flops_ratio']:.1f}% of "
          f"dense training), {s['train_seconds']:.0f} s")
    print(f"outputs in {result.out}/: metrics.jsonl summary.json architecture.json model.safetensors epi.png")


def _latency_table(args: argparse.Namespace) -> None:
    import torch

    from .latency import LatencySettings, in_memory_format, load_or_build
    from .models import build_model
    from .surgery import PrunableGraph
    from .trainer import resolve_device

    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise EpipruneError(f"bad input shape {args.input_shape!r} (accepted: C,H,W such as 1,28,28 or 3,32,32)")
    if args.model not in MODELS:
        raise EpipruneError(f"unknown model {args.model!r} (accepted: {', '.join(MODELS)})")
    settings = LatencySettings(target=args.latency_target, batch_size=args.latency_batch or args.batch_size,
                               channels_last=args.channels_last, amp=args.amp)
    device = resolve_device(args.device)
    try:
        model = build_model(args.model, shape[0], args.num_classes).to(device)
    except ValueError as e:
        raise EpipruneError(str(e)) from None
    model = in_memory_format(model, settings.channels_last)
    graph = PrunableGraph(model, torch.zeros(1, *shape, device=device))
    cost, path = load_or_build(graph, settings, args.out, progress=not args.no_progress)
    print(f"{path}: dense {settings.target} step at batch {settings.batch_size} = {cost.dense:.1f} ms predicted")


def _interrupt_message(args: argparse.Namespace) -> str:
    if args.command == "compare":
        return (f"interrupted; finished runs are kept in {args.out}/runs (run the same command again: it skips them "
                "and resumes the unfinished ones from their checkpoints)")
    folder = getattr(args, "run_folder", None)
    if args.command == "train" and folder is not None:
        if folder.checkpointed or args.resume is not None:
            return f"interrupted; the last finished epoch is checkpointed (resume with --resume {folder.out})"
        return "interrupted before the first epoch finished: nothing of this run was saved" + (
            f" ({folder.out} is as it was)" if args.force else "")
    return "interrupted"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `epiprune` command; returns the exit code (0, 1 runtime failure, 2 bad input, 130)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            _train(args, argv)
        elif args.command == "export":
            _export(args)
        elif args.command == "compare":
            _compare(args)
        elif args.command == "latency-table":
            _latency_table(args)
        elif args.command == "predict":
            _predict(args)
        elif args.command == "report":
            from .folder_report import report

            report(args.folder)
    except EpipruneError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except DistributedError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    except OSError as e:  # the file system refused (no space, a folder that takes no files, ...): no traceback
        where = f" ({e.filename})" if e.filename else ""
        sys.stderr.write(f"error: {e.strerror or e}{where}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"error: {_interrupt_message(args)}\n")
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
