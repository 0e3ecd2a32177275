"""A built wheel, installed (not editable) into a fresh environment, serves the viewer and finds the
CUDA kernel sources from an empty folder: web/ and kernels/ ship inside the package."""

from __future__ import annotations

import os
import re
import shutil
import signal
import site
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "livevsr", "web", "kernels")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build from a copy of the sources, so no stale build/ of the checkout can leak into the wheel."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if result.returncode != 0 and "bdist_wheel" in result.stderr:
        pytest.skip("this setuptools cannot build wheels (needs setuptools >= 70.1 or the wheel package)")
    assert result.returncode == 0, result.stderr
    (built,) = out.glob("livevsr-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the wheel installed; the heavy dependencies (torch, aiortc, ...) come
    from this interpreter's site-packages through a plain path entry, which runs none of their .pth
    files, so an editable livevsr there cannot shadow the installed one."""
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
         str(wheel)],
        check=True, timeout=300, env=clean_env(),
    )  # fmt: skip
    return env


def clean_env() -> dict[str, str]:
    """This environment less what points Python at the checkout."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "LIVEVSR_WORKTREE", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


def test_the_wheel_holds_every_package_the_viewer_and_the_kernels(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = sorted(p.parent.relative_to(REPO).as_posix() for p in (REPO / "livevsr").rglob("__init__.py"))
    missing = [p for p in packages if f"{p}/__init__.py" not in names]
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"
    for path in sorted((REPO / "web").iterdir()):
        assert f"livevsr/_web/{path.name}" in names
    for path in sorted((REPO / "kernels").glob("*.cu")):
        assert f"livevsr/_kernels/{path.name}" in names


def test_installed_wheel_finds_the_kernel_sources(venv: Path, tmp_path: Path) -> None:
    code = (
        "import livevsr; from livevsr.engines.flashvsr.kernels import KERNEL_DIR; "
        "print(livevsr.__file__); print(KERNEL_DIR); print(*sorted(p.name for p in KERNEL_DIR.glob('*.cu')))"
    )
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    module, kernel_dir, sources = result.stdout.splitlines()
    assert module.startswith(str(venv)), f"imported {module}, not the installed wheel"
    assert kernel_dir.startswith(str(venv)) and kernel_dir.endswith("livevsr/_kernels")
    assert sources.split() == sorted(p.name for p in (REPO / "kernels").glob("*.cu"))


def test_installed_wheel_serves_the_viewer_from_an_empty_folder(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "rtmp:\n  listen: '127.0.0.1:0'\nhttp:\n  listen: '127.0.0.1:0'\n"
        "engine:\n  name: bicubic\nstreams:\n  - name: main\n    key: k-main\n"
    )
    proc = subprocess.Popen(
        [str(venv / "bin" / "livevsr"), "serve"],  # the console script, default config.yaml in the cwd
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(),
    )  # fmt: skip
    try:
        port, lines = 0, []
        deadline = time.monotonic() + 60
        while not port and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if match := re.search(r"HTTP: viewer and API at http://[^:]+:(\d+)/", line):
                port = int(match.group(1))
        assert port, "server did not start:\n" + "".join(lines)
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/", timeout=10) as resp:
            page = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("text/html")
        assert "viewer.js" in page
        with urllib.request.urlopen(f"{base}/web/viewer.js", timeout=10) as resp:
            assert resp.read() == (REPO / "web" / "viewer.js").read_bytes()
        with urllib.request.urlopen(f"{base}/view/main", timeout=10) as resp:
            assert "viewer.js" in resp.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
