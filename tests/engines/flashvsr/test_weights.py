"""Strict weight loading: official key sets at full size (no data), tiny files load, problems name keys."""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from livevsr.engines.flashvsr.dit import DiTConfig, WanDiT
from livevsr.engines.flashvsr.proj_in import BufferLQ4xProj, CausalLQ4xProj
from livevsr.engines.flashvsr.tc_decoder import TCDecoder
from livevsr.engines.flashvsr.wan_vae import WanVAEDecoder
from livevsr.engines.flashvsr.weights import (
    WEIGHT_FILES,
    check_weights_dir,
    inspect_file,
    load_dit,
    load_proj_in,
    load_prompt,
    load_tc_decoder,
    load_wan_vae_decoder,
    weights_available,
    weights_check_main,
)
from livevsr.errors import WeightsError

# Parameter counts of spec section 6 (the Wan decoder's is the rest of the paper's Full count).
FULL_PARAMS = {"dit": 1_418_996_800, "proj_in": 287_845_888, "tc_decoder": 45_338_371, "wan_vae": 73_295_603}
TINY_DIT = DiTConfig(dim=32, ffn_dim=48, num_heads=2, num_layers=2, text_dim=24)


def _meta(factory: type[nn.Module], *args: object, **kwargs: object) -> nn.Module:
    with torch.device("meta"):
        return factory(*args, **kwargs)


@functools.cache
def _full_modules() -> dict[str, nn.Module]:
    """Built once: shared, never modified."""
    return {
        "dit": _meta(WanDiT),
        "proj_in": _meta(BufferLQ4xProj),
        "tc_decoder": _meta(TCDecoder),
        "wan_vae": _meta(WanVAEDecoder),
    }


# --- writing files -------------------------------------------------------------------------------


def _write_sparse_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A valid bf16 safetensors file whose data is a hole: full-size headers for free."""
    header: dict[str, object] = {}
    offset = 0
    for key, shape in shapes.items():
        n = 2 * int(torch.Size(shape).numel())
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)


def _broadcast_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Full-size tensors that are zero-stride views of one element: torch.save stores 4 bytes each."""
    return {k: torch.zeros(1).expand(s) if s else torch.zeros(()) for k, s in shapes.items()}


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _write_full_size_dir(d: Path) -> None:
    mods = _full_modules()
    _write_sparse_safetensors(d / WEIGHT_FILES["dit"], _shapes(mods["dit"]))
    torch.save(_broadcast_state(_shapes(mods["proj_in"])), d / WEIGHT_FILES["proj_in"])
    torch.save(_broadcast_state(_shapes(mods["tc_decoder"])), d / WEIGHT_FILES["tc_decoder"])
    vae = _broadcast_state(_shapes(mods["wan_vae"]))
    vae |= _broadcast_state({"encoder.conv1.weight": (96, 3, 3, 3, 3), "conv1.weight": (32, 32, 1, 1, 1)})
    torch.save(vae, d / WEIGHT_FILES["wan_vae"])
    torch.save(torch.randn(1, 512, 4096), d / WEIGHT_FILES["prompt"])


def _randomised(module: nn.Module) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {k: torch.randn_like(v) for k, v in module.state_dict().items()}


def _tiny_modules() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "dit": WanDiT(TINY_DIT),
        "proj_in": BufferLQ4xProj(out_dim=8, hidden_dims=(4, 6)),
        "tc_decoder": TCDecoder(channels=(8, 8, 4, 4)),
        "wan_vae": WanVAEDecoder(dim=4),
    }


def _tiny_meta_modules() -> dict[str, nn.Module]:
    return {
        "dit": _meta(WanDiT, TINY_DIT),
        "proj_in": _meta(BufferLQ4xProj, out_dim=8, hidden_dims=(4, 6)),
        "tc_decoder": _meta(TCDecoder, channels=(8, 8, 4, 4)),
        "wan_vae": _meta(WanVAEDecoder, dim=4),
    }


def _write_tiny_dir(d: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Tiny random weights in the official formats; returns what was written, by file."""
    states = {name: _randomised(m) for name, m in _tiny_modules().items()}
    save_file({k: v.bfloat16() for k, v in states["dit"].items()}, d / WEIGHT_FILES["dit"])
    torch.save(states["proj_in"], d / WEIGHT_FILES["proj_in"])
    torch.save(states["tc_decoder"], d / WEIGHT_FILES["tc_decoder"])
    encoder = {
        "encoder.conv1.weight": torch.randn(4, 3, 3, 3, 3),
        "conv1.weight": torch.randn(32, 32, 1, 1, 1),
    }
    torch.save(encoder | states["wan_vae"], d / WEIGHT_FILES["wan_vae"])
    torch.save(torch.randn(1, 7, 4096), d / WEIGHT_FILES["prompt"])
    return states


LOADERS = {
    "dit": load_dit,
    "proj_in": load_proj_in,
    "tc_decoder": load_tc_decoder,
    "wan_vae": load_wan_vae_decoder,
}


# --- full size: key sets and parameter counts ------------------------------------------------------


def test_full_size_modules_have_the_official_parameter_counts() -> None:
    for name, module in _full_modules().items():
        assert sum(p.numel() for p in module.parameters()) == FULL_PARAMS[name], name
    assert len(_full_modules()["dit"].state_dict()) == 825  # 15 top-level + 30 blocks x 27


def test_full_size_key_sets_pass_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_full_size_dir(tmp_path)
    assert check_weights_dir(tmp_path) == []
    vae = inspect_file(tmp_path, "wan_vae")
    assert vae.ok and vae.ignored == ["encoder.conv1.weight", "conv1.weight"]  # reported, not missing
    assert vae.parameters == FULL_PARAMS["wan_vae"]
    assert inspect_file(tmp_path, "dit").parameters == FULL_PARAMS["dit"]

    assert weights_check_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (
        "OK    diffusion_pytorch_model_streaming_dmd.safetensors  825 tensors, 1,418,996,800 parameters"
        in out
    )
    assert "2 encoder keys skipped" in out
    assert "prompt [1, 512, 4096] float32" in out


def test_full_size_proj_in_loads_into_meta_modules_of_both_versions(tmp_path: Path) -> None:
    _write_full_size_dir(tmp_path)
    for version, cls in (("v1.0", BufferLQ4xProj), ("v1.1", CausalLQ4xProj)):
        m = load_proj_in(tmp_path, version=version)  # zero-stride tensors: no memory
        assert isinstance(m, cls)
        assert not any(p.is_meta or p.requires_grad for p in m.parameters())
        assert m.conv2.weight.shape == (3072, 2048, 4, 3, 3)


# --- tiny files: strict round trips ----------------------------------------------------------------


def test_tiny_files_load_strictly_into_meta_modules(tmp_path: Path) -> None:
    written = _write_tiny_dir(tmp_path)
    meta = _tiny_meta_modules()
    for name, loader in LOADERS.items():
        module = loader(tmp_path, meta[name])
        assert module is meta[name]
        for key, value in module.state_dict().items():
            want = written[name][key]
            want = want.bfloat16() if name == "dit" else want
            assert not value.is_meta and value.dtype == want.dtype, key
            torch.testing.assert_close(value, want, rtol=0, atol=0, msg=key)

    dit = load_dit(tmp_path, _meta(WanDiT, TINY_DIT), dtype=torch.float32)
    assert dit.blocks[1].ffn[2].weight.dtype == torch.float32

    prompt = load_prompt(tmp_path, dtype=torch.bfloat16)
    assert prompt.shape == (1, 7, 4096) and prompt.dtype == torch.bfloat16


@torch.no_grad()
def test_loaded_modules_run(tmp_path: Path) -> None:
    _write_tiny_dir(tmp_path)
    proj = load_proj_in(tmp_path, _meta(BufferLQ4xProj, out_dim=8, hidden_dims=(4, 6)))
    proj.reset()
    proj.warmup(torch.zeros(1, 3, 1, 16, 32))
    assert proj.forward_clip(torch.zeros(1, 3, 4, 16, 32)).shape == (1, 2, 8)
    vae = load_wan_vae_decoder(tmp_path, _meta(WanVAEDecoder, dim=4))
    vae.reset()
    assert vae.decode_chunk(torch.zeros(1, 16, 2, 2, 2)).shape == (1, 3, 5, 16, 16)


@pytest.mark.parametrize("wrap", ["model_state", "model_prefix"])
def test_wan_vae_file_variants_load(tmp_path: Path, wrap: str) -> None:
    state = _randomised(WanVAEDecoder(dim=4))
    if wrap == "model_state":  # the wrapper DiffSynth's converter unwraps
        obj: object = {"model_state": state}
    else:  # keys already converted to DiffSynth's naming
        obj = {f"model.{k}": v for k, v in state.items()} | {"model.encoder.conv1.weight": torch.zeros(2)}
    torch.save(obj, tmp_path / WEIGHT_FILES["wan_vae"])
    m = load_wan_vae_decoder(tmp_path, _meta(WanVAEDecoder, dim=4))
    torch.testing.assert_close(m.decoder.head[2].weight, state["decoder.head.2.weight"], rtol=0, atol=0)


# --- problems --------------------------------------------------------------------------------------


def _rewrite(path: Path, edit: str) -> str:
    """Break a torch.save'd state dict; returns the key the error must name."""
    state = torch.load(path, weights_only=True)
    if edit == "missing":
        key = "conv2.bias"
        del state[key]
    elif edit == "unexpected":
        key = "conv3.weight"
        state[key] = torch.zeros(3)
    else:
        key = "norm1.gamma"
        state[key] = torch.zeros(5, 1, 1, 1)
    torch.save(state, path)
    return key


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        ("missing", "1 key missing (conv2.bias)"),
        ("unexpected", "1 unexpected key (conv3.weight)"),
        (
            "wrong_shape",
            "1 key with the wrong shape (norm1.gamma: [5, 1, 1, 1] in the file, [4, 1, 1, 1] expected)",
        ),
    ],
)
def test_each_problem_is_a_weights_error_naming_file_and_key(tmp_path: Path, edit: str, phrase: str) -> None:
    _write_tiny_dir(tmp_path)
    path = tmp_path / WEIGHT_FILES["proj_in"]
    _rewrite(path, edit)
    with pytest.raises(WeightsError) as err:
        load_proj_in(tmp_path, _meta(BufferLQ4xProj, out_dim=8, hidden_dims=(4, 6)))
    msg = str(err.value)
    assert msg.startswith(f"weights: {path}: {phrase}; point engine.flashvsr.weights_dir at "), msg
    assert "huggingface.co/JunhaoZhuang/FlashVSR" in msg


def test_missing_dit_keys_are_listed_first_three(tmp_path: Path) -> None:
    state = {k: v.bfloat16() for k, v in _randomised(WanDiT(TINY_DIT)).items()}
    for key in (
        "blocks.0.self_attn.q.weight",
        "blocks.0.self_attn.k.weight",
        "blocks.1.ffn.0.bias",
        "head.modulation",
    ):
        del state[key]
    save_file(state, tmp_path / WEIGHT_FILES["dit"])
    with pytest.raises(
        WeightsError, match=r"4 keys missing \(blocks\.0\.self_attn\.q\.weight, .*, \.\.\.\)"
    ) as err:
        load_dit(tmp_path, _meta(WanDiT, TINY_DIT))
    assert WEIGHT_FILES["dit"] in str(err.value)


def test_unreadable_and_absent_files(tmp_path: Path) -> None:
    (tmp_path / WEIGHT_FILES["tc_decoder"]).write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"TCDecoder\.ckpt: cannot be read"):
        load_tc_decoder(tmp_path, _meta(TCDecoder, channels=(8, 8, 4, 4)))
    (tmp_path / WEIGHT_FILES["dit"]).write_bytes(b"\x00" * 16)
    with pytest.raises(WeightsError, match=r"safetensors: not a readable safetensors file"):
        load_dit(tmp_path, _meta(WanDiT, TINY_DIT))
    with pytest.raises(
        WeightsError, match=r"Wan2\.1_VAE\.pth: not found; point engine\.flashvsr\.weights_dir"
    ):
        load_wan_vae_decoder(tmp_path)
    torch.save({"prompt": torch.zeros(1, 2, 4096)}, tmp_path / WEIGHT_FILES["prompt"])
    with pytest.raises(
        WeightsError, match=r"got a dict; copy examples/WanVSR/prompt_tensor/posi_prompt\.pth from"
    ):
        load_prompt(tmp_path)
    torch.save(torch.zeros(2, 4096), tmp_path / WEIGHT_FILES["prompt"])
    with pytest.raises(WeightsError, match=r"got torch.float32 \[2, 4096\]"):
        load_prompt(tmp_path)


# --- user-facing checks ----------------------------------------------------------------------------


def test_weights_available_names_the_missing_files(tmp_path: Path) -> None:
    _write_full_size_dir(tmp_path)
    assert weights_available(tmp_path, "tiny") == (True, f"weights found in {tmp_path}")
    (tmp_path / WEIGHT_FILES["tc_decoder"]).unlink()
    assert weights_available(tmp_path, "full")[0]
    assert weights_available(tmp_path, "tiny") == (
        False,
        f"weights not found in {tmp_path} (missing TCDecoder.ckpt)",
    )
    ok, reason = weights_available(tmp_path / "nowhere", "full")
    assert not ok and reason.endswith(
        "(missing diffusion_pytorch_model_streaming_dmd.safetensors, "
        "LQ_proj_in.ckpt, Wan2.1_VAE.pth, posi_prompt.pth)"
    )


def test_check_main_reports_each_file_and_fails_on_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_full_size_dir(tmp_path)
    _rewrite(tmp_path / WEIGHT_FILES["proj_in"], "missing")
    (tmp_path / WEIGHT_FILES["tc_decoder"]).unlink()
    assert weights_check_main([str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"checking {tmp_path} for the FlashVSR weights (all: 5 files)"
    by_file = {line.split()[1]: line.split()[0] for line in lines[1:6]}
    assert by_file == {
        "diffusion_pytorch_model_streaming_dmd.safetensors": "OK",
        "LQ_proj_in.ckpt": "FAIL",
        "TCDecoder.ckpt": "FAIL",
        "Wan2.1_VAE.pth": "OK",
        "posi_prompt.pth": "OK",
    }
    assert any("LQ_proj_in.ckpt" in line and "1 key missing (conv2.bias)" in line for line in lines)
    assert any("TCDecoder.ckpt" in line and "not found" in line for line in lines)
    assert lines[-1].startswith("2 of 5 files have problems")

    assert weights_check_main([str(tmp_path), "--variant", "full"]) == 1  # proj-in is still broken
    problems = check_weights_dir(tmp_path, "full")
    assert len(problems) == 1 and "LQ_proj_in.ckpt: 1 key missing (conv2.bias)" in problems[0]


def test_pre_zip_checkpoints_load_without_mmap(tmp_path: Path) -> None:
    state = _randomised(TCDecoder(channels=(8, 8, 4, 4)))
    torch.save(state, tmp_path / WEIGHT_FILES["tc_decoder"], _use_new_zipfile_serialization=False)
    m = load_tc_decoder(tmp_path, _meta(TCDecoder, channels=(8, 8, 4, 4)))
    torch.testing.assert_close(m.decoder[26].weight, state["decoder.26.weight"], rtol=0, atol=0)
