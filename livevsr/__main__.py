"""Command line: ``livevsr serve | upscale | bench | weights``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys

from livevsr import __version__
from livevsr.errors import LiveVSRError

log = logging.getLogger("livevsr")

BENCHES = {
    "g2g": "livevsr.bench.g2g",  # glass-to-glass latency through the live server
    "attention": "livevsr.bench.attention",  # CuPy kernels vs SDPA vs FlexAttention (GPU)
    "engine": "livevsr.bench.engine",  # FlashVSR per-step time and memory (GPU)
    "e2e": "livevsr.bench.e2e",  # the whole FlashVSR step at a given size (GPU)
    "profile": "livevsr.bench.profile",  # one steady FlashVSR step under torch.profiler (GPU)
    "gpu": "livevsr.bench.gpu",  # the prepared GPU check: tests and every GPU bench, budgeted (GPU)
    "soak": "livevsr.bench.soak",  # publishers, viewers and garbage for minutes (CPU, bicubic)
    "audio": "livevsr.bench.audio",  # the WHEP audio transcode's cost per stream (CPU)
}


def _serve(args: argparse.Namespace) -> int:
    from livevsr.app import serve_forever
    from livevsr.config import load_config
    from livevsr.telemetry.logs import setup_logging

    config = load_config(args.config)
    setup_logging(config.log.level, config.log.json)
    log.info("livevsr %s starting with %s", __version__, args.config)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve_forever(config))
    return 0


def _upscale(args: argparse.Namespace) -> int:
    from livevsr.config import load_config
    from livevsr.engines.registry import EngineChoice, choose_engine, create_engine
    from livevsr.pipeline.file import upscale_file
    from livevsr.telemetry.logs import setup_logging

    config = load_config(args.config)
    setup_logging(config.log.level, config.log.json)
    engine_config = config.engine
    if args.engine:
        import dataclasses

        engine_config = dataclasses.replace(engine_config, name=args.engine)
    choice: EngineChoice = choose_engine(engine_config)
    log.info("engine %s (%s)", choice.name, choice.reason)
    engine = create_engine(choice, engine_config, output_height=args.height)
    frames_in, frames_out = upscale_file(
        args.input, args.output, engine, config.encoder, output_height=args.height
    )
    print(f"{args.output}: {frames_out} frames upscaled from {frames_in}")
    return 0 if frames_in == frames_out else 1


def _output_height(text: str) -> int:
    """``--height``: as ``streams[].output_height``: 0 (native 4x) or an even height 64..4320."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value and not (64 <= value <= 4320 and value % 2 == 0):
        raise argparse.ArgumentTypeError(f"expected 0 (native 4x) or an even height 64..4320, got {value}")
    return value


def _bench(args: argparse.Namespace, rest: list[str]) -> int:
    module = importlib.import_module(BENCHES[args.which])
    return module.main(rest)


def _weights(args: argparse.Namespace) -> int:
    from livevsr.engines.flashvsr.weights import weights_check_main

    return weights_check_main([args.dir, "--variant", args.variant])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livevsr", description="Real-time live-stream 4x video upscaler")
    parser.add_argument("--version", action="version", version=f"livevsr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the live server: RTMP in, WHEP/web viewer out")
    p.add_argument("--config", default="config.yaml", help="YAML config file (default: config.yaml)")

    p = sub.add_parser("upscale", help="upscale a video file with the same engine and encoder")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--config", default=None, help="YAML config file (default: built-in defaults)")
    p.add_argument("--engine", choices=("auto", "bicubic", "flashvsr"), default=None)
    p.add_argument(
        "--height",
        type=_output_height,
        default=0,
        help="output height; the width follows the input's aspect ratio (default 0: the engine's 4x)",
    )

    # add_help=False: "livevsr bench g2g --help" reaches the benchmark's own parser.
    p = sub.add_parser("bench", help="benchmarks (append rows to BENCHMARKS.md)", add_help=False)
    p.add_argument("which", choices=sorted(BENCHES))

    sub.add_parser(
        "fuzz", add_help=False, help="fuzz the RTMP/AMF0/FLV/SDP parsers with atheris (--seconds N)"
    )

    p = sub.add_parser("weights", help="FlashVSR weight files")
    wsub = p.add_subparsers(dest="action", required=True)
    w = wsub.add_parser("check", help="load the official files strictly and report what is wrong")
    w.add_argument("dir")
    w.add_argument("--variant", choices=("tiny", "full", "all"), default="all", help="which files to check")

    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("bench", "fuzz"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "upscale":
            return _upscale(args)
        if args.command == "bench":
            return _bench(args, rest)
        if args.command == "fuzz":
            from livevsr.fuzz import main as fuzz_main

            return fuzz_main(rest)
        return _weights(args)
    except LiveVSRError as exc:
        print(f"livevsr: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
