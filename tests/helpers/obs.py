"""OBS Studio, headless: Xvfb on a free display and OBS configured entirely through its files.

``obs_studio(folder, rtmp_server, key, clip)`` writes a fresh config (``$XDG_CONFIG_HOME/obs-studio``
under ``folder``): global.ini marking the first-run wizard as done, a profile with a simple-mode
x264 + AAC output at the clip's size and a custom RTMP service (server + key), and a scene
collection with one looping media source playing ``clip`` (video and sound). It then starts
``obs --startstreaming`` and yields the process; OBS and Xvfb are killed (their whole process
groups: SIGTERM, then SIGKILL) on the way out, whatever happened. Skips where ``obs`` or ``Xvfb`` is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest

from livevsr.testing.publisher import AUDIO_FRAME_SAMPLES, AUDIO_RATE, _tone, synthetic_frame

PROFILE = COLLECTION = "livevsr"


def write_clip(path: Path, width: int, height: int, seconds: float = 3.0, fps: int = 30) -> Path:
    """A short H.264 + AAC MP4 of the moving test pattern and a tone, for OBS's media source."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        samples = 0
        for index in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(width, height, index), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            out.mux(video.encode(frame))
            while samples < (index + 1) * AUDIO_RATE // fps:
                chunk = av.AudioFrame.from_ndarray(
                    _tone(samples, AUDIO_FRAME_SAMPLES), format="fltp", layout="stereo"
                )
                chunk.sample_rate, chunk.pts, chunk.time_base = AUDIO_RATE, samples, Fraction(1, AUDIO_RATE)
                out.mux(sound.encode(chunk))
                samples += AUDIO_FRAME_SAMPLES
        out.mux(video.encode(None))
        out.mux(sound.encode(None))
    return path


def write_config(config_home: Path, rtmp_server: str, key: str, clip: Path, width: int, height: int) -> None:
    obs = config_home / "obs-studio"
    profile = obs / "basic" / "profiles" / PROFILE
    scenes = obs / "basic" / "scenes"
    profile.mkdir(parents=True)
    scenes.mkdir(parents=True)
    # FirstRun=true: the auto-configuration wizard has "already run"; LastVersion (29.0.2, packed)
    # keeps the what's-new dialog away.
    (obs / "global.ini").write_text(
        "[General]\nFirstRun=true\nLastVersion=486539266\nEnableAutoUpdates=false\n"
        f"[Basic]\nProfile={PROFILE}\nProfileDir={PROFILE}\n"
        f"SceneCollection={COLLECTION}\nSceneCollectionFile={COLLECTION}\n"
        "[BasicWindow]\nSysTrayEnabled=false\n"
    )
    # OBS's own defaults otherwise (simple mode: x264 CBR, keyframes every 250 frames, AAC 128k).
    (profile / "basic.ini").write_text(
        f"[General]\nName={PROFILE}\n[Output]\nMode=Simple\n"
        "[SimpleOutput]\nStreamEncoder=x264\nVBitrate=600\nABitrate=128\nPreset=ultrafast\n"
        f"[Video]\nBaseCX={width}\nBaseCY={height}\nOutputCX={width}\nOutputCY={height}\n"
        "FPSType=0\nFPSCommon=30\n[Audio]\nSampleRate=48000\nChannelSetup=Stereo\n"
    )
    service = {"type": "rtmp_custom", "settings": {"server": rtmp_server, "key": key, "use_auth": False}}
    (profile / "service.json").write_text(json.dumps(service))
    media_uuid, scene_uuid = "6c1f3b1e-0000-4000-8000-000000000001", "6c1f3b1e-0000-4000-8000-000000000002"
    media = {
        "id": "ffmpeg_source", "versioned_id": "ffmpeg_source", "name": "Clip", "uuid": media_uuid,
        "settings": {"local_file": str(clip), "is_local_file": True, "looping": True, "restart_on_activate": True},
        "enabled": True, "muted": False, "volume": 1.0, "mixers": 255, "monitoring_type": 0,
    }  # fmt: skip
    item = {"name": "Clip", "source_uuid": media_uuid, "id": 1, "visible": True, "pos": {"x": 0, "y": 0},
            "scale": {"x": 1, "y": 1}, "align": 5, "bounds_type": 0}  # fmt: skip
    scene = {
        "id": "scene", "versioned_id": "scene", "name": "Scene", "uuid": scene_uuid, "enabled": True,
        "settings": {"items": [item], "id_counter": 1},
    }  # fmt: skip
    collection = {
        "name": COLLECTION, "current_scene": "Scene", "current_program_scene": "Scene",
        "scene_order": [{"name": "Scene"}], "sources": [scene, media], "groups": [], "transitions": [],
        "current_transition": "Fade", "transition_duration": 300, "quick_transitions": [], "modules": {},
    }  # fmt: skip
    (scenes / f"{COLLECTION}.json").write_text(json.dumps(collection))


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the whole group (Xvfb then removes its socket and lock), SIGKILL after 5 s."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    proc.wait(timeout=10)


@contextlib.contextmanager
def xvfb() -> Iterator[str]:
    """An X server on a display nobody uses (Xvfb picks it: -displayfd); yields ``:N``."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
        pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 15)
        number = os.read(read_end, 16).decode().strip() if ready else ""
        if not number:
            raise RuntimeError("Xvfb did not start within 15 s")
        yield f":{number}"
    finally:
        os.close(read_end)
        _kill_group(proc)


@contextlib.contextmanager
def obs_studio(
    folder: Path, rtmp_server: str, key: str, clip: Path, width: int, height: int
) -> Iterator[subprocess.Popen]:
    for tool, package in (("obs", "obs-studio"), ("Xvfb", "xvfb")):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (Debian: {package})")
    config_home = folder / "config"
    write_config(config_home, rtmp_server, key, clip, width, height)
    with xvfb() as display:
        env = dict(
            os.environ, DISPLAY=display, HOME=str(folder), XDG_CONFIG_HOME=str(config_home),
            LIBGL_ALWAYS_SOFTWARE="1", QT_QPA_PLATFORM="xcb",
        )  # fmt: skip
        argv = ["obs", "--startstreaming", "--minimize-to-tray", "--disable-shutdown-check", "--multi",
                "--disable-updater", "--profile", PROFILE, "--collection", COLLECTION]  # fmt: skip
        with open(folder / "obs.log", "wb") as log:
            proc = subprocess.Popen(argv, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        try:
            yield proc
        finally:
            _kill_group(proc)


def obs_log_tail(folder: Path, lines: int = 30) -> str:
    path = folder / "obs.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
