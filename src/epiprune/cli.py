"""Command line: `epiprune train` (more subcommands follow). Bad input exits with code 2 and one line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING

from epiprune.costs.timing import MAX_PAIR_RATIO_SPREAD, TARGETS
from epiprune.errors import DistributedError, EpipruneError
from epiprune.evidence.runs import SHARED_SETTINGS, CompareConfig
from epiprune.models import MODELS, is_import_path
from epiprune.models.user import parse_layer_names, parse_model_kwargs
from epiprune.numerics import AMP_DTYPES
from epiprune.run.config import TrainConfig, read_config_file
from epiprune.run.config_text import int_list, parse_noise_limit
from epiprune.run.options import add_config_options, config_values

if TYPE_CHECKING:
    from torch import nn


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
    """The command line's parser. Long on purpose: a flat listing of each subcommand's own options (train's and
    compare's shared ones are generated from TrainConfig), read top to bottom like --help."""
    parser = _Parser(prog="epiprune", description="Prune CNNs structurally during training, at the epoch the "
                     "Early Pruning Indicator picks (Shen et al., CVPR 2022).")
    from epiprune import __version__

    parser.add_argument("--version", action="version", version=f"epiprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train, prune when EPI triggers, train the pruned network to the end",
                       formatter_class=_Help)
    add_config_options(t)  # every TrainConfig field, in its order
    t.add_argument("--config", default=None, metavar="FILE",
                   help="read the run's settings from this JSON file of TrainConfig fields (compare writes one into "
                   "every run folder: config.json); options given beside it override it (default: none)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (the per-epoch lines stay)")
    t.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR from its last checkpoint, with its own settings (only "
                   "--no-progress may be added) (default: none, a new run)")
    t.add_argument("--force", action="store_true",
                   help="replace the run already in --out (its files are kept until the new run's first checkpoint), "
                   "and rebuild a --latency-table file made for another model or other settings over the old one")
    c = sub.add_parser("compare", help="run every pruning method (dense, prune-at-init, train-prune-fine-tune, "
                       "fixed-epoch grid = oracle, Early-Bird, EPI) and tabulate accuracy and training cost",
                       formatter_class=_Help)
    # the settings every run shares: train's options (help, type, choices), compare's defaults
    add_config_options(c, SHARED_SETTINGS, defaults={f.name: f.default for f in fields(CompareConfig)
                                                     if f.name in SHARED_SETTINGS and f.default is not MISSING})
    c.add_argument("--grid", default=None, help="fixed prune epochs, e.g. 1,2,3 or 1-6 (default: 1..epochs/2); on "
                   "the step clock (--epi-every N or auto) fractions, e.g. 0.5,1.25, and by default up to 12 probes at "
                   "or before epochs/2, spaced quadratically (denser early: the k-th of n at probe ceil(N (k/n)^2) of "
                   "the N probes), each branched from the dense run and named fixed-<epochs> (the probe's time, e.g. "
                   "fixed-2.66)")
    c.add_argument("--finetune-epochs", type=int, default=None, help="fine-tune epochs of train-prune-fine-tune "
                   "(default: epochs/4)")
    c.add_argument("--seeds", default="0", help="comma-separated seeds; mean and spread are reported")
    c.add_argument("--methods", default="dense,plain,init,tpf,fixed,earlybird,epi",
                   help="which method families to run, comma-separated")
    c.add_argument("--no-branch", action="store_true", help="train every fixed-epoch, train-prune-fine-tune and "
                   "EPI run from scratch instead of branching it from its seed's dense run (the same results, more "
                   "compute)")
    c.add_argument("--jobs", type=int, default=1, help="runs in parallel (threads are split between them)")
    c.add_argument("--out", default="runs/compare", help="output folder: the table, the plots, and runs/<method>/"
                   "seed<k>/ for every run")
    c.add_argument("--force", action="store_true", help="rerun methods whose results already exist")
    e = sub.add_parser("export", help="export a run's (pruned) model for use without epiprune", formatter_class=_Help)
    e.add_argument("run_dir", help="output folder of `epiprune train`")
    e.add_argument("--format", default="torchscript", choices=("torchscript", "export", "onnx", "safetensors"),
                   help="torchscript (torch.jit.load), export (torch.export .pt2: torch.export.load), onnx (needs "
                   "onnx + onnxscript), or safetensors with the architecture in its metadata (epiprune.load_pruned)")
    e.add_argument("--out", default=None, help="file to write, ending in the format's suffix (.pt, .pt2, .onnx, "
                   ".safetensors); an existing file is refused unless --force (default: RUN_DIR/model_export.<format "
                   "suffix>)")
    e.add_argument("--force", action="store_true", help="replace the file at --out if it exists")
    e.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                   help="for a run of your own network: its factory, imported to build the dense network that the "
                   "run's surgery and weights are applied to (epiprune never imports a module named in a saved "
                   "file) (default: none, the run's registry model)")
    e.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="keyword arguments of --model's factory (default: those recorded in the run)")

    lt = sub.add_parser("latency-table", help="measure a model's per-layer latency table on this device (what "
                        "`train --budget latency:F` uses; train builds it itself when missing)",
                        formatter_class=_Help)
    _add_latency_table_options(lt)

    r = sub.add_parser("report", help="tables and plots again from a train or compare folder, without training "
                                      "(also while a compare grid is still running)", formatter_class=_Help)
    r.add_argument("folder", help="output folder of `epiprune train` or `epiprune compare`")
    p = sub.add_parser("predict", help="print the top classes for image files: check that a trained or exported "
                       "model works as it is", formatter_class=_Help)
    p.add_argument("model_path", metavar="MODEL", help="a run folder of `epiprune train` or its model.safetensors, "
                   "or a file of `epiprune export` (.safetensors, .pt, .pt2, .onnx)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them (resized and "
                   "converted like training's)")
    p.add_argument("--top", type=int, default=3, help="classes shown per image, most likely first")
    p.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                   help="for a run of your own network: its factory, imported to build the dense network that the "
                   "run's surgery and weights are applied to (default: none, the run's registry model)")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="keyword arguments of --model's factory (default: those recorded in the run)")
    return parser


def _add_latency_table_options(lt: argparse.ArgumentParser) -> None:
    """`latency-table`'s options: what `train` would be given for the run the table is for (same names, so that
    the table built here is the one train looks for), each described for this command."""
    lt.add_argument("--model", default="resnet20", help=f"the network to time: {', '.join(MODELS)}, or your own as "
                    "package.module:factory (as train's --model; called with num_classes and in_channels if it "
                    "takes them)")
    lt.add_argument("--model-kwargs", default=None, metavar="JSON", help="keyword arguments of your --model factory "
                    "as a JSON object, the same as the run's (default: none)")
    lt.add_argument("--ignore-layers", default=None, metavar="NAMES", help="the run's --ignore-layers: "
                    "comma-separated module names never pruned (default: none)")
    lt.add_argument("--input-shape", default="1,28,28", help="one sample's C,H,W as the run feeds it (built-in data "
                    "and Fashion-MNIST: 1,28,28; CIFAR: 3,32,32; an image folder: 3,S,S for --image-size S)")
    lt.add_argument("--num-classes", type=int, default=None, help="outputs of the classifier (>= 1) (default: 10; "
                    "a language model's: 256, the byte vocabulary of --data text)")
    lt.add_argument("--seq-len", type=int, default=128, help="a language model's (lm_tiny's) tokens per sample, the "
                    "run's --seq-len, in place of --input-shape")
    lt.add_argument("--batch", "--batch-size", dest="batch_size", type=int, default=128,
                    help="the run's training batch size (train's --batch-size): a step is timed at this batch "
                    "unless --latency-batch is given")
    lt.add_argument("--latency-target", default="train", choices=TARGETS, help="train: time a training step "
                    "(forward, backward, optimizer step); infer: a forward pass only")
    lt.add_argument("--latency-batch", type=int, default=None, help="samples per timed step, when not --batch "
                    "(e.g. 1 with --latency-target infer for one image's latency) (default: --batch)")
    lt.add_argument("--channels-last", action="store_true", help="time in channels-last memory format (a table for "
                    "a run with train --channels-last)")
    lt.add_argument("--amp", default="none", choices=tuple(AMP_DTYPES), help="autocast dtype to time in (a table "
                    "for a run with train --amp)")
    lt.add_argument("--latency-noise-limit", default=str(MAX_PAIR_RATIO_SPREAD), metavar="FRACTION",
                    help="refuse the table if its timings spread more than this (pair ratios' interquartile range "
                    "over median, median over layer sizes; a number > 0). A higher limit accepts a table built under "
                    "load (two threads on a busy machine measured 0.74-0.94): the run's closed loop at the prune "
                    "still corrects the pick against measured times. Not part of the table's key: train reuses the "
                    "table whatever its own limit")
    lt.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to time: auto is a GPU "
                    "when CUDA is available; a table is only valid on the device that measured it")
    lt.add_argument("--out", default=None, metavar="PATH", help="file to write, or to reuse if it holds the table "
                    "of these settings; one of another model or other settings is refused unless --force (default: "
                    "the cache file train looks for, under $EPIPRUNE_CACHE or ~/.cache/epiprune)")
    lt.add_argument("--force", action="store_true",
                    help="rebuild a table at --out that was made for another model or other settings over it")
    lt.add_argument("--no-progress", action="store_true", help="no progress bar")


_int_list = int_list  # benchmarks import it from here


def _explicit(argv: list[str], command: str) -> dict:
    """{dest: value} of the options of `command` that argv sets explicitly."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        action.default = argparse.SUPPRESS
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if k != "command"}


def _given_options(argv: list[str], command: str) -> list[str]:
    """The options of `command` that argv sets explicitly (first spelling of each), in the parser's order."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    given = _explicit(argv, command)
    return [a.option_strings[0] for a in sub._actions if a.option_strings and a.dest in given]


def _compare(args: argparse.Namespace) -> None:
    from epiprune.evidence.compare import compare
    from epiprune.evidence.grid import epoch_list

    given = {name: value for name, value in vars(args).items() if name in SHARED_SETTINGS and value is not None}
    grid = None
    if args.grid:
        grid = int_list(args.grid, "grid") if given.get("epi_every", "epoch") == "epoch" else epoch_list(args.grid)
    cfg = CompareConfig(**config_values(given), grid=grid,
                        finetune_epochs=args.finetune_epochs, seeds=int_list(args.seeds, "seeds"),
                        families=[m.strip() for m in args.methods.split(",")], jobs=args.jobs, out=args.out,
                        force=args.force, branch=not args.no_branch)
    compare(cfg)
    print(f"table and plots in {args.out}/: compare.md compare.json accuracy_vs_cost.png "
          "accuracy_vs_prune_epoch.png epi_curve.png widths_heatmap.png")


def _dense_network(run: str, factory: str | None, kwargs_text: str | None) -> nn.Module | None:
    """The dense network of a run of the user's own network, built by the factory named on the command line (a
    name in a saved file is never imported); None when no --model is given (a registry model's run)."""
    from pathlib import Path

    from epiprune.io.serialization import read_spec
    from epiprune.models import make_model

    if factory is None and kwargs_text is None:
        return None
    if factory is None:
        raise EpipruneError("--model-kwargs is given without --model (accepted: --model package.module:factory "
                            "with it)")
    spec, _ = read_spec(Path(run))
    if factory != spec.get("model"):
        sys.stderr.write(f"warning: --model {factory} is not the run's recorded model {spec.get('model')!r}; its "
                         "weights must fit it\n")
    kwargs = parse_model_kwargs(kwargs_text) if kwargs_text is not None else spec.get("model_kwargs") or {}
    task = spec.get("task", "image")  # a language model's spec records its task and seq_len, not an image size
    try:
        size, in_channels, num_classes = tuple(spec["input_size"]), spec["in_channels"], spec["num_classes"]
    except (KeyError, TypeError) as e:
        raise EpipruneError(f"bad architecture spec in {run} ({e})") from None
    return make_model(factory, in_channels, num_classes, kwargs, None if task == "text" else size, task)


def _export(args: argparse.Namespace) -> None:
    from epiprune.io.export import export_run

    dense = _dense_network(args.run_dir, args.model, args.model_kwargs)
    path = export_run(args.run_dir, args.format, args.out, model=dense, force=args.force)
    print(f"wrote {path}")


def _predict(args: argparse.Namespace) -> None:
    from pathlib import Path

    from epiprune.io.predict import predict

    path = Path(args.model_path)
    dense = None
    if args.model is not None or args.model_kwargs is not None:
        if not (path.is_dir() or path.suffix == ".safetensors"):
            raise EpipruneError(f"--model is for a run of your own network, and {path} is not a run folder or "
                                ".safetensors file (accepted: --model with a run, or an exported file alone)")
        dense = _dense_network(args.model_path, args.model, args.model_kwargs)
    for image, top in predict(path, args.images, args.top, model=dense):
        print(f"{image}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in top))


def train_config(args: argparse.Namespace, argv: list[str]) -> TrainConfig:
    """The run `train` describes: its --config file, then the options given beside it; what neither sets keeps
    TrainConfig's default (which is also the option's default; None for a network-dependent setting, which the
    config fills in: run/defaults.py)."""
    values = read_config_file(args.config) if args.config is not None else {}
    given = config_values(_explicit(argv, "train"))
    values.update(given)
    if args.no_progress:
        values["progress"] = False
    cfg = TrainConfig(**values)
    # the default value given explicitly, too; AdamW given, or a transformer's default
    if "momentum" in given and cfg.optimizer == "adamw":
        raise EpipruneError(f"--momentum {given['momentum']} is SGD's and AdamW does not use it (accepted: "
                            "--momentum with --optimizer sgd, or AdamW without --momentum)")
    return cfg


def _train(args: argparse.Namespace, argv: list[str]) -> None:
    from epiprune.costs.latency_build import replacing_tables
    from epiprune.run.folder import RunFolder
    from epiprune.run.trainer import train

    if args.resume is not None:
        # a run of the user's own network needs its factory named again (a saved file never makes epiprune import)
        allowed = ("--resume", "--no-progress", *(("--model",) if is_import_path(args.model) else ()))
        ignored = [o for o in _given_options(argv, "train") if o not in allowed]
        if ignored:
            raise EpipruneError(f"{', '.join(ignored)} cannot be changed with --resume: the run continues with its "
                                "own settings (accepted with --resume: --no-progress, and --model MODULE:FACTORY "
                                "for a run of your own network; or a new run with --out and --force)")

    cfg = train_config(args, argv)
    if args.resume is not None:
        cfg.out = args.resume
    args.run_folder = RunFolder(cfg.out, resume=args.resume is not None, force=args.force)
    # a table of other settings is rebuilt over the named file only when asked (a resumed run: its own copy)
    with replacing_tables(args.force or args.resume is not None):
        result = train(cfg, resume=args.resume is not None, folder=args.run_folder)
    from epiprune import distributed

    main_rank = distributed.is_main()
    distributed.shutdown()  # every rank leaves the group before exiting (see shutdown)
    if not main_rank:
        return
    s = result.summary
    when = "never" if s["prune_epoch"] is None else f"after epoch {s['prune_epoch']} ({s['trigger']})"
    final = f"final val top-1 {100 * s['final_val_top1']:.2f}%" if "final_val_bits_per_byte" not in s else \
        f"final val {s['final_val_bits_per_byte']:.3f} bits/byte (perplexity {s['final_val_perplexity']:.2f})"
    if "final_test_bits_per_byte" in s:  # --holdout: the split that chose nothing, which compare reports
        final += f", test {s['final_test_bits_per_byte']:.3f} bits/byte (perplexity {s['final_test_perplexity']:.2f})"
    elif "final_test_top1" in s:
        final += f", test top-1 {100 * s['final_test_top1']:.2f}%"
    print(f"pruned {when}; {final}")
    print(f"FLOPs {s['dense_flops'] / 1e6:.2f}M -> {s['final_flops'] / 1e6:.2f}M ({100 * s['flops_ratio']:.1f}%), "
          f"params {s['dense_params'] / 1e6:.3f}M -> {s['final_params'] / 1e6:.3f}M ({100 * s['params_ratio']:.1f}%)")
    print(f"training cost {s['train_flops_total'] / 1e12:.3f} TFLOPs ({100 * s['train_flops_ratio']:.1f}% of "
          f"dense training), {s['train_seconds']:.0f} s")
    print(f"outputs in {result.out}/: metrics.jsonl summary.json architecture.json model.safetensors epi.png")


def _latency_table(args: argparse.Namespace) -> None:
    from epiprune.run.latency_command import build, prepare

    cfg = TrainConfig(model=args.model, model_kwargs=parse_model_kwargs(args.model_kwargs) if args.model_kwargs
                      else {}, ignore_layers=parse_layer_names(args.ignore_layers) if args.ignore_layers else [],
                      batch_size=args.batch_size, latency_target=args.latency_target, latency_batch=args.latency_batch,
                      channels_last=args.channels_last, amp=args.amp, device=args.device, seq_len=args.seq_len,
                      latency_noise_limit=parse_noise_limit(args.latency_noise_limit))
    job = prepare(cfg, args.input_shape, args.num_classes, args.out, args.force)  # every check before timing
    cost = build(job, args.force, progress=not args.no_progress)
    print(f"{job.path}: dense {job.settings.target} step at batch {job.settings.batch_size} = {cost.dense:.1f} ms "
          "predicted")


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
    if not argv:  # a bare `epiprune`: what it can do, not only "the following arguments are required: command"
        build_parser().print_help()
        return 0
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
            from epiprune.evidence.report import report

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
