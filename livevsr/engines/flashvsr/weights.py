"""Strict loading of the official FlashVSR weight files (spec section 6).

The five files of ``huggingface.co/JunhaoZhuang/FlashVSR`` (``posi_prompt.pth`` comes from the
FlashVSR GitHub repository, ``examples/WanVSR/prompt_tensor/``) sit together in one folder,
``engine.flashvsr.weights_dir``. Every module's attributes are named like its checkpoint keys, so a
file loads with no renaming table, and it must match exactly: any missing, unexpected or
wrongly-shaped key is a ``WeightsError`` naming the file and the first keys. The only keys skipped
on purpose are the Wan VAE's encoder half (``encoder.*``, ``conv1.*``), which the decoder never uses.

Memory: modules are built on the meta device and the file's tensors are assigned into them one by
one (``load_state_dict(assign=True)``), read through ``safetensors.safe_open`` or
``torch.load(mmap=True)``; a load needs about one model's size in RAM, never two, and keys that are
skipped are never read.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from livevsr.errors import WeightsError

log = logging.getLogger(__name__)

WEIGHT_FILES: dict[str, str] = {
    "dit": "diffusion_pytorch_model_streaming_dmd.safetensors",
    "proj_in": "LQ_proj_in.ckpt",
    "tc_decoder": "TCDecoder.ckpt",
    "wan_vae": "Wan2.1_VAE.pth",
    "prompt": "posi_prompt.pth",
}
VARIANT_FILES: dict[str, tuple[str, ...]] = {
    "tiny": ("dit", "proj_in", "tc_decoder", "prompt"),  # TC decoder
    "full": ("dit", "proj_in", "wan_vae", "prompt"),  # Wan2.1 VAE decoder
    "all": tuple(WEIGHT_FILES),
}
# Keys a file may hold that we skip without reading: the Wan VAE's encoder half, and (defensively)
# an encoder in the TC decoder file, which upstream loads with strict=False.
IGNORED_PREFIXES: dict[str, tuple[str, ...]] = {
    "wan_vae": ("encoder.", "conv1."),
    "tc_decoder": ("encoder.",),
}
HINT = "point engine.flashvsr.weights_dir at the files from huggingface.co/JunhaoZhuang/FlashVSR"
PROMPT_HINT = (
    "copy examples/WanVSR/prompt_tensor/posi_prompt.pth from github.com/OpenImagingLab/FlashVSR "
    "into engine.flashvsr.weights_dir"
)
PROMPT_DIM = 4096  # T5 width of the prompt tensor (the DiT's text_dim)
SHOWN_KEYS = 3  # keys named per kind of problem in a message


def _shape(s: tuple[int, ...] | torch.Size) -> str:
    return "[" + ", ".join(str(d) for d in s) + "]"


def _first(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")


@dataclass
class FileReport:
    """What one weight file holds compared with the module it loads into."""

    name: str  # key of WEIGHT_FILES
    path: Path
    error: str = ""  # the file is absent or unreadable; the lists below are then empty
    missing: list[str] = field(default_factory=list)  # module keys not in the file
    unexpected: list[str] = field(default_factory=list)  # file keys the module does not have
    # (key, shape in the file, shape the module expects)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # file keys skipped on purpose
    tensors: int = 0  # tensors that load
    parameters: int = 0  # their elements
    summary: str = ""  # extra detail for the OK line (the prompt's shape)

    @property
    def ok(self) -> bool:
        return not (self.error or self.missing or self.unexpected or self.mismatched)

    def details(self) -> list[str]:
        """What is wrong, one phrase per kind of problem, naming the first offending keys."""
        if self.error:
            return [self.error]
        parts = []
        if self.missing:
            n = len(self.missing)
            parts.append(f"{n} key{'s' * (n != 1)} missing ({_first(self.missing)})")
        if self.unexpected:
            n = len(self.unexpected)
            parts.append(f"{n} unexpected key{'s' * (n != 1)} ({_first(self.unexpected)})")
        if self.mismatched:
            n = len(self.mismatched)
            shown = ", ".join(
                f"{k}: {_shape(f)} in the file, {_shape(m)} expected"
                for k, f, m in self.mismatched[:SHOWN_KEYS]
            )
            parts.append(
                f"{n} key{'s' * (n != 1)} with the wrong shape ({shown}{', ...' * (n > SHOWN_KEYS)})"
            )
        return parts

    def problem(self) -> str:
        """One line naming the file and what is wrong with it; empty when the file is fine."""
        if self.ok:
            return ""
        hint = PROMPT_HINT if self.name == "prompt" else HINT
        return f"weights: {self.path}: " + "; ".join(self.details()) + f"; {hint}"


class _FileProblem(Exception):
    """A file is absent or unreadable; the message is the reason, without the path."""


# ---------------------------------------------------------------------------------------------
# Reading files without reading their tensors


class _Source:
    """A weight file opened for key/shape inspection, with tensors read on demand."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], get: Callable[[str], torch.Tensor]) -> None:
        self.shapes = shapes  # file order
        self.get = get


@contextlib.contextmanager
def _open(path: Path) -> Iterator[_Source]:
    """Open a .safetensors file or a torch.save'd state dict; raise _FileProblem if unreadable."""
    if not path.is_file():
        raise _FileProblem("not found")
    if path.suffix == ".safetensors":
        try:
            f = safe_open(str(path), framework="pt", device="cpu")
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as exc:  # safetensors has its own error types for corrupt headers
            raise _FileProblem(f"not a readable safetensors file ({exc})") from exc
        with f:
            yield _Source(shapes, f.get_tensor)
        return
    obj = _torch_load(path)
    if isinstance(obj, dict):
        for wrapper in ("model_state", "state_dict"):  # the Wan VAE converter unwraps model_state
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise _FileProblem(f"expected a state dict of tensors, got a {type(obj).__name__}")
    yield _Source({k: tuple(v.shape) for k, v in obj.items()}, obj.__getitem__)


def _torch_load(path: Path) -> object:
    """torch.load, memory-mapped where the file format allows, never unpickling code."""
    if not path.is_file():
        raise _FileProblem("not found")
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # files from torch < 1.6 cannot be memory-mapped: read them whole
            raise _FileProblem(f"cannot be read ({exc})") from exc
    except Exception as exc:
        raise _FileProblem(f"cannot be read ({exc})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _FileProblem(f"cannot be read ({exc})") from exc


def _file_key_to_module_key(name: str, key: str) -> str | None:
    """The module key a file key loads into; None if the key is skipped on purpose."""
    if name == "wan_vae" and key.startswith("model."):  # DiffSynth's converted naming
        key = key[len("model.") :]
    if key.startswith(IGNORED_PREFIXES.get(name, ())):
        return None
    return key


def _compare(name: str, path: Path, source: _Source, expected: dict[str, tuple[int, ...]]) -> FileReport:
    report = FileReport(name, path)
    found: dict[str, tuple[int, ...]] = {}
    for key, shape in source.shapes.items():
        mkey = _file_key_to_module_key(name, key)
        if mkey is None:
            report.ignored.append(key)
        elif mkey not in expected:
            report.unexpected.append(key)
        else:
            found[mkey] = shape
            if shape != expected[mkey]:
                report.mismatched.append((key, shape, expected[mkey]))
    report.missing = [k for k in expected if k not in found]
    if report.ok:
        report.tensors = len(found)
        report.parameters = sum(int(torch.Size(s).numel()) for s in found.values())
    return report


# ---------------------------------------------------------------------------------------------
# The modules each file loads into


def _default_module(name: str) -> nn.Module:
    """The full-size module a file belongs to, built on the meta device (no memory)."""
    with torch.device("meta"):
        if name == "dit":
            from livevsr.engines.flashvsr.dit import WanDiT

            return WanDiT()
        if name == "proj_in":
            from livevsr.engines.flashvsr.proj_in import BufferLQ4xProj

            return BufferLQ4xProj()  # the v1.1 CausalLQ4xProj has the same keys
        if name == "tc_decoder":
            from livevsr.engines.flashvsr.tc_decoder import TCDecoder

            return TCDecoder()
        if name == "wan_vae":
            from livevsr.engines.flashvsr.wan_vae import WanVAEDecoder

            return WanVAEDecoder()
    raise ValueError(f"weights: no module for {name!r}; expected one of dit, proj_in, tc_decoder, wan_vae")


def _expected(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@functools.cache
def _default_expected(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the full-size module (building the meta DiT takes a moment; do it once)."""
    return _expected(_default_module(name))


def inspect_file(weights_dir: str | Path, name: str, module: nn.Module | None = None) -> FileReport:
    """Compare one file's keys and shapes with its module without reading any tensor data.

    ``module`` defaults to the full-size module (built on the meta device); pass another one to check
    a file for a different configuration.
    """
    path = Path(weights_dir) / WEIGHT_FILES[name]
    try:
        if name == "prompt":
            return _inspect_prompt(path)
        expected = _expected(module) if module is not None else _default_expected(name)
        with _open(path) as source:
            return _compare(name, path, source, expected)
    except _FileProblem as exc:
        return FileReport(name, path, error=str(exc))


def _inspect_prompt(path: Path, text_dim: int = PROMPT_DIM) -> FileReport:
    report = FileReport("prompt", path)
    t = _torch_load(path)
    if not isinstance(t, torch.Tensor):
        report.error = f"expected a bare tensor [1, S, {text_dim}], got a {type(t).__name__}"
    elif t.ndim != 3 or t.shape[0] != 1 or t.shape[2] != text_dim or not t.is_floating_point():
        report.error = f"expected a float tensor [1, S, {text_dim}], got {t.dtype} {_shape(t.shape)}"
    else:
        report.tensors, report.parameters = 1, t.numel()
        report.summary = f"prompt {_shape(t.shape)} {str(t.dtype).removeprefix('torch.')}"
    return report


# ---------------------------------------------------------------------------------------------
# Loading


@contextlib.contextmanager
def _reraise(name: str, path: Path) -> Iterator[None]:
    try:
        yield
    except _FileProblem as exc:
        raise WeightsError(FileReport(name, path, error=str(exc)).problem()) from exc


def _load_into(
    name: str,
    weights_dir: str | Path,
    module: nn.Module | None,
    dtype: torch.dtype | None,
    device: torch.device | str,
) -> nn.Module:
    module = module if module is not None else _default_module(name)
    path = Path(weights_dir) / WEIGHT_FILES[name]
    expected = _expected(module)
    with _reraise(name, path), _open(path) as source:
        report = _compare(name, path, source, expected)
        if not report.ok:
            raise WeightsError(report.problem())
        by_module_key = {_file_key_to_module_key(name, k): k for k in source.shapes}
        state = {}
        for mkey in expected:  # one tensor at a time; skipped keys are never read
            t = source.get(by_module_key[mkey])
            state[mkey] = t.to(
                device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None
            )
            del t
        module.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:  # a non-persistent buffer built on meta: the module must compute it after loading
        raise RuntimeError(
            f"weights: {type(module).__name__} still has meta tensors after loading: {left[:3]}"
        )
    log.info("loaded %s: %d tensors, %d parameters", path, report.tensors, report.parameters)
    return module.eval().requires_grad_(False)


def load_dit(
    weights_dir: str | Path,
    module: nn.Module | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """``diffusion_pytorch_model_streaming_dmd.safetensors`` into ``module`` (default: a full-size WanDiT).

    ``dtype`` None keeps the file's dtype (bf16). Returns the module, in eval mode, without grads.
    """
    return _load_into("dit", weights_dir, module, dtype, device)


def load_proj_in(
    weights_dir: str | Path,
    module: nn.Module | None = None,
    *,
    version: str = "v1.0",
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """``LQ_proj_in.ckpt`` into ``module`` (default: the full-size proj-in of ``version``)."""
    if module is None:
        from livevsr.engines.flashvsr.proj_in import build_proj_in

        with torch.device("meta"):
            module = build_proj_in(version)
    return _load_into("proj_in", weights_dir, module, dtype, device)


def load_tc_decoder(
    weights_dir: str | Path,
    module: nn.Module | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """``TCDecoder.ckpt`` into ``module`` (default: the full-size TCDecoder)."""
    return _load_into("tc_decoder", weights_dir, module, dtype, device)


def load_wan_vae_decoder(
    weights_dir: str | Path,
    module: nn.Module | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The decoder half of ``Wan2.1_VAE.pth`` into ``module`` (default: a full-size WanVAEDecoder)."""
    return _load_into("wan_vae", weights_dir, module, dtype, device)


def load_prompt(
    weights_dir: str | Path,
    *,
    text_dim: int = PROMPT_DIM,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``posi_prompt.pth``: the fixed prompt embedding [1, S, text_dim] (part of the model upstream)."""
    path = Path(weights_dir) / WEIGHT_FILES["prompt"]
    with _reraise("prompt", path):
        report = _inspect_prompt(path, text_dim)
        if not report.ok:
            raise WeightsError(report.problem())
        t = _torch_load(path)
    assert isinstance(t, torch.Tensor)  # checked by _inspect_prompt
    return t.to(device=device, dtype=dtype).contiguous()


# ---------------------------------------------------------------------------------------------
# Checks for users


def weights_available(weights_dir: str | Path, variant: str) -> tuple[bool, str]:
    """Cheap: do the files ``variant`` needs exist? Returns (ok, a reason users can read)."""
    d = Path(weights_dir)
    if variant not in VARIANT_FILES:
        raise ValueError(f"weights: expected variant 'tiny', 'full' or 'all', got {variant!r}")
    missing = [WEIGHT_FILES[n] for n in VARIANT_FILES[variant] if not (d / WEIGHT_FILES[n]).is_file()]
    if missing:
        return False, f"weights not found in {d} (missing {', '.join(missing)})"
    return True, f"weights found in {d}"


def check_weights_dir(weights_dir: str | Path, variant: str = "all") -> list[str]:
    """Inspect every file ``variant`` needs (keys and shapes, no tensor data); one line per problem."""
    return [r.problem() for r in inspect_dir(weights_dir, variant) if not r.ok]


def inspect_dir(weights_dir: str | Path, variant: str = "all") -> list[FileReport]:
    if variant not in VARIANT_FILES:
        raise ValueError(f"weights: expected variant 'tiny', 'full' or 'all', got {variant!r}")
    return [inspect_file(weights_dir, n) for n in VARIANT_FILES[variant]]


def weights_check_main(argv: list[str]) -> int:
    """``livevsr weights check DIR [--variant tiny|full|all]``: a line per file; exit 1 on problems."""
    parser = argparse.ArgumentParser(prog="livevsr weights check", description=__doc__.split("\n")[0])
    parser.add_argument("dir", help="folder with the FlashVSR files (engine.flashvsr.weights_dir)")
    parser.add_argument(
        "--variant", choices=sorted(VARIANT_FILES), default="all", help="files to require (default: all five)"
    )
    args = parser.parse_args(argv)
    reports = inspect_dir(args.dir, args.variant)
    width = max(len(r.path.name) for r in reports)
    print(f"checking {args.dir} for the FlashVSR weights ({args.variant}: {len(reports)} files)")
    for r in reports:
        if r.ok:
            detail = r.summary or f"{r.tensors} tensors, {r.parameters:,} parameters"
            if r.ignored:
                detail += f" ({len(r.ignored)} encoder keys skipped)"
            print(f"  OK    {r.path.name:<{width}}  {detail}")
        else:
            where = f"; {PROMPT_HINT}" if r.name == "prompt" else ""
            print(f"  FAIL  {r.path.name:<{width}}  {'; '.join(r.details())}{where}")
    bad = sum(not r.ok for r in reports)
    if bad:
        print(f"{bad} of {len(reports)} files have problems; {HINT}")
        return 1
    print("all files load")
    return 0
