"""Train a convergent ConvNet by Equilibrium Propagation (or BPTT) on CIFAR-10, Fashion-MNIST or digits.

How to launch (the same script on one CPU, one GPU or many):
    python experiments/cifar.py                                  # embedded default: digits, 30-60 s on 2 CPU cores
    python experiments/cifar.py --list-presets                   # Table 1 rows and small presets
    accelerate launch experiments/cifar.py --preset ce-symmetric --data-root ../shared/data/cifar10-jpeg.tar.gz
    accelerate launch --multi_gpu --num_processes 2 experiments/cifar.py --cpu ...   # 2 CPU processes (gloo)
    python experiments/cifar.py --eval-only --resume runs/ce-symmetric

Every setting, its default, flag and check live in its section (ep_compile/config.py: RunConfig and
its sections; presets.py); the loop (train_step, evaluate, checkpoints, the all-reduce of hand-set gradients) in ep_compile/trainer.py.
"""

import argparse
import functools
import os
import sys
from pathlib import Path

# --help is answered before torch is imported (seconds on a busy machine): from the text the parser
# itself wrote (`python experiments/cifar.py --write-help`; tests/test_cli_help.py keeps it current)
HELP = Path(__file__).with_name("cifar_help.txt")
if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]) and HELP.exists():
    sys.stdout.write(HELP.read_text())
    sys.exit(0)

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from ep_compile.config import RunConfig, cautions  # noqa: E402
from ep_compile.data import make_splits  # noqa: E402
from ep_compile.machine import idle_cores  # noqa: E402
from ep_compile.model import ConfigError  # noqa: E402
from ep_compile.presets import DEFAULT, DESCRIPTIONS, PRESETS  # noqa: E402
from ep_compile.trainer import Diverged, Trainer, check_fresh_folder, settle_folder  # noqa: E402

HELP_COLUMNS = 100  # the width cifar_help.txt is written at


def set_threads(requested: int, world: int) -> str:
    """Threads per process on the CPU: --threads if given, else OMP_NUM_THREADS if set, else the idle
    cores (those this process may use, less what other work holds right now: machine.idle_cores)
    divided by the local processes (several processes launched together share all the cores).
    torch's own default takes every core even when other work holds them, and its spinning threads
    then oversubscribe the machine: a one-minute run was seen to take fifteen."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ  # accelerate launch sets OMP_NUM_THREADS=1 itself
    if requested:
        why = "--threads"
    elif "OMP_NUM_THREADS" in os.environ and not launched:
        return f"threads per process: {torch.get_num_threads()} (OMP_NUM_THREADS)"
    else:
        free = idle_cores()
        free = float(cores) if free is None else free
        # processes started together measure each other's start-up as busy: share the cores evenly
        idle = cores if launched and local > 1 else max(1, min(cores, round(free)))
        requested = max(1, idle // local)
        why = f"{idle} idle of {cores} cores ({free:.1f} idle now) / {local} local processes; --threads N sets it"
    torch.set_num_threads(requested)
    return f"threads per process: {requested} ({why})"


def training_function(config: RunConfig, args):
    out = Path(config.run.out)
    accelerator = Accelerator(
        cpu=args.cpu or not torch.cuda.is_available(),
        log_with="tensorboard" if args.with_tracking else None,
        project_dir=str(out),
    )
    log = accelerator.print
    if accelerator.device.type == "cpu":
        log(set_threads(args.threads, accelerator.num_processes))

    # uint8 images in memory; every process holds them and computes on its slice of each batch
    data = config.data
    splits = make_splits(
        data.dataset, data.data_root, data.val_size, data.train_subset, data.test_subset, config.run.seed,
        data.cache_dir, log=log,
    )  # fmt: skip
    if data.mean is None:  # a fresh run: preprocessing and classes come from its training data
        data.mean, data.std, data.classes = splits.mean, splits.std, splits.train.classes
        config.model.n_classes = len(data.classes)
    elif list(data.classes or []) != list(splits.train.classes):
        raise ConfigError(
            f"{data.data_root or data.dataset} has classes {splits.train.classes[:4]}..., the stored run "
            f"was trained on {list(data.classes or [])[:4]}... ({len(data.classes or [])} classes)"
        )
    n_train, world, batch = len(splits.train.y), accelerator.num_processes, config.optim.batch_size
    if batch > n_train:
        raise ConfigError(f"--batch-size {batch} is larger than the training set ({n_train} examples)")
    if batch % world:
        raise ConfigError(f"--batch-size {batch} must be divisible by the number of processes ({world})")
    if list(splits.train.x.shape[1:]) != list(config.model.in_shape):
        raise ConfigError(
            f"{data.dataset} images are {tuple(splits.train.x.shape[1:])}, the model "
            f"expects in_shape {tuple(config.model.in_shape)}"
        )

    if config.run.compile and not args.eval_only:
        log(
            "compiling the step on its first calls (about 20 s per step function on a CPU, minutes for a deep net); add --no-compile for quick tries"
        )
    trainer = Trainer(config, accelerator, splits, resume=args.resume, log=log)
    if args.eval_only:
        if not args.resume:
            raise ConfigError("--eval-only needs --resume DIR (the run to evaluate)")
        err, steps = trainer.evaluate(splits.test)
        log(
            f"test error {100 * err:.2f}% (accuracy {100 * (1 - err):.2f}%) on {len(splits.test.y)} images, "
            f"{steps:g} free-phase steps (T={config.phases.T}, tol={config.phases.tol:g})"
        )
        return {"test_error": err, "free_steps": steps}

    trainer.open_run(out, fresh=not args.resume, overwrite=args.overwrite)
    try:
        if args.with_tracking:
            accelerator.init_trackers("ep_compile", {k: str(v) for k, v in config.to_dict().items()})
        trainer.fit(crash_at_step=args.simulate_crash_at_step, tracking=args.with_tracking)
    except BaseException:  # before its first checkpoint an --overwrite gives the folder back to the old run
        trainer.abandon_run()
        raise
    last = trainer.finish()
    accelerator.wait_for_everyone()  # no rank tears its process group down while another still talks to it
    accelerator.end_training()  # finishes trackers and destroys the process group: no gloo thread alive at exit
    return last


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifar.py",
        description="Train a convergent ConvNet by EP or BPTT.",
        epilog="Defaults shown are the sections' own, the paper's ce-symmetric recipe; the preset (by default "
        "digits-ce-symmetric, --list-presets) overrides some of them, and every flag given overrides the preset. "
        "Quick tries of a compiled preset (cifar10-cpu, the paper's rows): add --no-compile, compiling takes minutes.",
    )
    parser.add_argument(
        "--preset", default=DEFAULT, help=f"hyper-parameter preset (see --list-presets; default: {DEFAULT})"
    )
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    RunConfig.add_args(parser)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads per process (default 0: the idle cores, divided by the local processes under accelerate)",
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    parser.add_argument("--resume", default=None, help="continue (or evaluate) the run in this folder")
    parser.add_argument(
        "--overwrite", action="store_true", help="start a fresh run in a folder that already holds one (replaces it)"
    )
    parser.add_argument("--eval-only", action="store_true", help="evaluate the --resume checkpoint on the test set")
    parser.add_argument("--with-tracking", action="store_true", help="also log to TensorBoard through accelerate")
    parser.add_argument(
        "--simulate-crash-at-step",
        type=int,
        default=0,
        help="testing: SIGKILL this process after N optimizer steps, to check exact resume",
    )
    parser.add_argument("--write-help", action="store_true", help=argparse.SUPPRESS)
    return parser


def help_text() -> str:
    """--help as the parser formats it on a HELP_COLUMNS-wide terminal: what cifar_help.txt holds."""
    parser = build_parser()
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=HELP_COLUMNS - 2)  # as argparse sizes it
    return parser.format_help()


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.write_help:
        HELP.write_text(help_text())
        print(f"wrote {HELP}")
        return 0
    if args.list_presets:
        for name, preset in PRESETS.items():
            p = RunConfig.from_dict(preset)
            mark = "*" if name == DEFAULT else " "
            print(f"{mark} {name:<26} {DESCRIPTIONS[name]}")
            print(
                f"  {'':<26} {p.data.dataset}, {p.estimator}, T={p.phases.T} K={p.phases.K} beta={p.phases.beta}, "
                f"{p.optim.epochs} epochs{', compiled' if p.run.compile else ''}"
            )
        print("(* marks the default: the preset of a run without --preset)")
        return 0
    config = None
    try:
        if args.threads < 0:
            raise ConfigError(f"--threads must be >= 0 (0: automatic), got {args.threads}")
        if args.resume:
            folder = Path(args.resume)
            settle_folder(folder if folder.is_dir() else folder.parent)  # an --overwrite a kill interrupted
            config = RunConfig.resume(args)
        else:
            config = RunConfig.from_args(args)
            settle_folder(Path(config.run.out))
            if not args.overwrite:  # early, before the data load; again under the folder's lock
                check_fresh_folder(Path(config.run.out))
        for line in cautions(config):
            print(f"cifar.py: {line}", file=sys.stderr)
        training_function(config, args)
    except ConfigError as e:
        print(f"cifar.py: error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        last = Path(config.run.out) / "last.pt"
        where = f"the last good checkpoint {last} is intact" if last.exists() else "no checkpoint was written yet"
        print(f"cifar.py: diverged: {e}; {where}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # one of several processes: everything is written and the process group destroyed; skip the
        # interpreter's teardown, where a rank was seen to die with "terminate called without an
        # active exception" (SIGABRT) about once in 40 launches under load
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
