"""`wubugen data inspect | demo | cache | moving-mnist`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from wubugen.config import HelpFormatter, add_config_arguments, config_from_args
from wubugen.data import moving_mnist
from wubugen.data.pipeline import DataInfo, build_datasets
from wubugen.data.synthetic import write_demo
from wubugen.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect footage; make demo or Moving-MNIST data",
                                 description="Inspect footage and make synthetic data.", formatter_class=HelpFormatter,
                                 epilog="examples:\n  wubugen data inspect footage/\n"
                                        "  wubugen data cache --prune_days 30")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: _usage(data))

    ins = sub.add_parser(
        "inspect", help="list the footage found, its windows and split, and every file that cannot be used",
        description="Decode (into the cache) and describe the footage at PATH with the given data options: files, "
                    "frames, resolution, fps, codec, windows, split sizes, and each unusable file with the reason.",
        epilog="examples:\n  wubugen data inspect footage/ --image_h 256 --image_w 256 --num_input_frames 10 "
               "--num_predict_frames 3\n  wubugen data inspect clips.txt --validation_split_fraction 0.2 --json",
    )
    ins.add_argument("path", metavar="PATH", help="video file, folder (searched recursively), frame folder, or list")
    ins.add_argument("--seed", dest="opt__seed", default=None, metavar="N",
                     help="split seed: the training seed, --seed of `wubugen train` (default 42)")
    ins.add_argument("--json", action="store_true", help="print the full report as JSON")
    add_config_arguments(ins, only=("data",))
    ins.set_defaults(func=_inspect)

    demo = sub.add_parser(
        "demo", help="write the synthetic demo footage (the default training data) to a folder",
        description="Render the synthetic footage that `wubugen train` uses when no --video_data_path is given: "
                    "--demo_num_clips clips of --demo_clip_frames frames at --image_h x --image_w, as folders of "
                    "numbered PNG frames (lossless: the same bytes on every machine).",
        epilog="example:\n  wubugen data demo demo_data/ --demo_num_clips 16 --image_h 128 --image_w 128",
    )
    demo.add_argument("out", metavar="OUT", help="folder to create (must be empty or new)")
    add_config_arguments(demo, only=("data",))
    demo.set_defaults(func=_demo)

    cache = sub.add_parser(
        "cache", help="show what the frame and flow cache holds; remove entries unused for N days, or all",
        description="The cache keeps one entry per source and frame format (and per flow backend); entries for settings "
                    "no longer used stay until removed here. Without options: a summary, nothing removed.",
        formatter_class=HelpFormatter,
        epilog="examples:\n  wubugen data cache\n  wubugen data cache --prune_days 30 --dry_run\n"
               "  wubugen data cache --cache_dir /scratch/cache --clear",
    )
    cache.add_argument("--cache_dir", default=None, metavar="DIR", help="the cache folder (default: the config's, .wubugen_cache)")
    cache.add_argument("--prune_days", type=float, default=None, metavar="DAYS",
                       help="remove entries not used for DAYS days (and leftover temporary files older than a day)")
    cache.add_argument("--clear", action="store_true", help="remove every entry")
    cache.add_argument("--dry_run", action="store_true", help="say what would be removed, remove nothing")
    cache.set_defaults(func=_cache)

    mm = sub.add_parser(
        "moving-mnist", help="make a Moving-MNIST array (standard protocol) from a digits .npy",
        description="Standard Moving MNIST: 64x64, two 28x28 digits bouncing at 3.6 px per frame, max compositing. "
                    "Writes uint8 (N, T, 64, 64) to OUT.npy, usable directly as --video_data_path.",
        formatter_class=HelpFormatter,
        epilog="example:\n  wubugen data moving-mnist mmnist.npy --digits mnist_train_images.npy --num_sequences 2000\n"
               "  wubugen train --preset quickstart --video_data_path mmnist.npy",
    )
    mm.add_argument("out", metavar="OUT.npy", help="the array to write")
    mm.add_argument("--digits", required=True, metavar="FILE.npy", help="digits (N, 28, 28) uint8, e.g. MNIST")
    mm.add_argument("--num_sequences", type=int, default=10000, metavar="N", help="sequences to make")
    mm.add_argument("--seq_len", type=int, default=moving_mnist.SEQ_LEN, metavar="N", help="frames per sequence")
    mm.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the digits' choice, positions and speeds")
    mm.set_defaults(func=_moving_mnist)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _cache(args: argparse.Namespace) -> int:
    from wubugen.config import DataConfig
    from wubugen.data import cache_admin

    if args.prune_days is not None and args.prune_days < 0:
        raise UserError(f"--prune_days must be >= 0, not {args.prune_days:g}")
    cache_dir = Path(args.cache_dir or DataConfig().cache_dir)
    if args.cache_dir and not cache_dir.is_dir():
        raise UserError(f"--cache_dir {cache_dir}: no such folder")
    files = cache_admin.scan(cache_dir)
    print(f"cache: {cache_dir.resolve()}")
    for line in cache_admin.summary(files) or ["(empty)"]:
        print(f"  {line}")
    if args.prune_days is None and not args.clear:
        return 0
    doomed = cache_admin.select(files, older_than_days=args.prune_days, everything=args.clear)
    size = sum(f.size for f in doomed) / 2 ** 20
    if args.dry_run:
        for f in doomed:
            print(f"  would remove {f.path}")
        print(f"would remove {len(doomed)} files, {size:.1f} MiB")
        return 0
    freed = cache_admin.remove(doomed)
    print(f"removed {len(doomed)} files, {freed / 2 ** 20:.1f} MiB")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    args.opt__video_data_path = args.path
    cfg = config_from_args(args)
    bundle = build_datasets(cfg)
    if args.json:
        print(json.dumps(bundle.info.to_dict(), indent=1))
    else:
        print(format_info(bundle.info))
    return 0


def format_info(info: DataInfo) -> str:
    """The human-readable report of `wubugen data inspect`."""
    lines: list[str] = []
    src = f"{info.train_path} (synthetic demo footage)" if info.demo else info.train_path
    lines.append(f"footage: {src}" + (f"; validation: {info.val_path}" if info.val_path else ""))
    name_w = max([len("file")] + [len(s.name) for s in info.sources])
    header = f"  {'file':<{name_w}}  {'kind':<6} {'frames':>6}  {'source':>9}  {'fps':>6}  {'codec':<8} " \
             f"{'windows':>7} {'train':>6} {'val':>6}  notes"
    lines.append(header)
    for s in info.sources:
        fps = f"{s.fps:.2f}" if s.fps else "-"
        notes = list(s.notes)
        if s.scene_cuts:
            notes.insert(0, f"{s.scene_cuts} scene cuts")
        lines.append(
            f"  {s.name:<{name_w}}  {s.kind:<6} {s.frames:>6}  {f'{s.width}x{s.height}':>9}  {fps:>6}  {s.codec:<8} "
            f"{s.windows:>7} {s.train_windows:>6} {s.val_windows:>6}  {'; '.join(notes)}".rstrip()
        )
    total_frames = sum(s.frames for s in info.sources)
    lines.append(f"  {len(info.sources)} usable sources, {total_frames} frames"
                 + (f", {info.ignored_files} other files ignored" if info.ignored_files else ""))
    if info.unusable:
        lines.append(f"could not use {len(info.unusable)}:")
        lines.extend(f"  {u['path']}: {u['reason']}" for u in info.unusable)
    if info.duplicates:
        lines.append(f"duplicates used once ({len(info.duplicates)}):")
        lines.extend(f"  {d['path']}: same content as {d['same_as']}" for d in info.duplicates)
    predict = info.window_frames
    cut = f"scene cuts above {info.scene_cut_threshold:g}" if info.scene_cut_threshold > 0 else "scene cuts ignored"
    lines.append(f"windows: {predict} frames every {info.frame_skip} (span {info.window_span}), stride "
                 f"{info.window_stride}, {cut}; frames {info.image_h}x{info.image_w}x{info.channels} by {info.resize}")
    if info.split_mode == "path":
        how = "separate validation path"
    elif info.split_mode == "none":
        how = "no validation (fraction 0)"
    else:
        how = f"{info.split_mode}, fraction {info.val_fraction:g}, seed {info.split_seed}"
        if info.split_mode == "time":
            how += f", blocks of {info.val_block_size} windows, {info.guard_dropped} windows dropped as guard"
    lines.append(f"split ({how}): {info.train_windows} training windows, {info.val_windows} validation windows")
    lines.append(f"cache: {info.cache_dir} ({info.cache_built} decoded now, {info.cache_reused} reused)")
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty folder")
    d = cfg.data
    paths = write_demo(out, num_clips=d.demo_num_clips, clip_frames=d.demo_clip_frames, height=d.image_h,
                       width=d.image_w)
    print(f"wrote {len(paths)} clips of {d.demo_clip_frames} frames at {d.image_h}x{d.image_w} to {out}")
    return 0


def _moving_mnist(args: argparse.Namespace) -> int:
    out = moving_mnist.write(args.out, args.digits, num_sequences=args.num_sequences, seq_len=args.seq_len,
                             seed=args.seed)
    print(f"wrote {args.num_sequences} Moving-MNIST sequences of {args.seq_len} frames (64x64) to {out}")
    return 0
