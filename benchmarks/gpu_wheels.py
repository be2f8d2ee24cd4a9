"""The Python 3.12 wheels a GPU lease needs (benchmarks/gpu_session.sh), into .whl/, small
enough to travel: the device tool carries at most 64 MiB a call, the working tree included.

The GPU image has torch, numpy, scipy, lxml, absl-py, protobuf, pillow, h5py and more, but not
Gymnasium, the simulators' Python packages or the task libraries. Two of those are mostly
pictures: Meta-World's wheel is 37 MB, 34 MB of it texture PNGs, and dm_control's is 56 MB, most
of it the meshes of locomotion walkers, the soccer arena and the dog. So this script rewrites
those two wheels (a local repack, not a new release):

- metaworld: every texture PNG is downscaled 8x per side (same colours, a blurrier wood grain).
  State-based tasks never render, so their dynamics, rewards and expert scores are unchanged;
  the 4 pixel twins would look slightly different, and the GPU suite does not run them.
- dm_control: `locomotion/`, `suite/dog_assets/`, `mujoco/testing/`, `blender/` and
  `mjcf/test_assets/` are dropped. The suite's domains (cartpole, reacher, finger, ball_in_cup,
  walker, cheetah, point_mass) import none of them: checked below by building all 8 shipped
  DMC tasks and every Meta-World task from the slimmed wheels.

    .venv/bin/python benchmarks/gpu_wheels.py [--check]

`--check` installs the slimmed pure-Python wheels into a scratch folder ahead of this venv's
copies and builds and steps every Meta-World and shipped DMC task from them.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS = [  # pinned as in pyproject's extras; the GPU image has the rest (device KINDS.md)
    "gymnasium==1.4.0", "farama-notifications==0.0.6", "minigrid==3.2.0", "metaworld==3.1.1",
    "mujoco==3.3.0", "glfw==2.11.0", "pyopengl==3.1.10", "minari==0.5.4", "tyro==1.0.17",
    "docstring-parser==0.18.0", "typeguard==4.6.1", "Box2D==2.3.10", "dm-control==1.0.28",
    "dm-env==1.6", "dm-tree==0.1.9", "shimmy==2.0.1", "minatar==1.0.15",
]  # fmt: skip
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
DROP_DM_CONTROL = (
    "dm_control/locomotion/", "dm_control/suite/dog_assets/", "dm_control/mujoco/testing/",
    "dm_control/blender/", "dm_control/mjcf/test_assets/",
)  # fmt: skip
TEXTURE_SCALE = 8
SLIM_MARK = "OPENGATO_SLIM"


def download(dest: Path) -> None:
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest)]  # fmt: skip
    subprocess.run(cmd + WHEELS, check=True)


def repack(wheel: Path, keep, transform=lambda name, data: data) -> None:
    """Rewrite `wheel` in place with the members `keep(name)` accepts, each passed through
    `transform`. The RECORD keeps its old hashes: pip installs with --no-deps from a local
    file do not verify them, and `gpu_session.sh` installs exactly so."""
    src = zipfile.ZipFile(wheel)
    if any(n.endswith(SLIM_MARK) for n in src.namelist()):  # repacked by an earlier run
        return
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if keep(info.filename):
                out.writestr(info.filename, transform(info.filename, src.read(info)))
        dist_info = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        out.writestr(
            dist_info.replace("RECORD", SLIM_MARK), "repacked by benchmarks/gpu_wheels.py\n"
        )
    src.close()
    before = wheel.stat().st_size
    wheel.write_bytes(buf.getvalue())
    print(f"{wheel.name}: {before / 1e6:.1f} MB -> {wheel.stat().st_size / 1e6:.1f} MB")


def shrink_png(name: str, data: bytes) -> bytes:
    if not name.endswith(".png"):
        return data
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    size = (max(1, img.width // TEXTURE_SCALE), max(1, img.height // TEXTURE_SCALE))
    out = io.BytesIO()
    img.resize(size, Image.Resampling.BOX).save(out, "PNG", optimize=True)
    return out.getvalue()


CHECK_CODE = """
import dm_control, metaworld
assert metaworld.__file__.startswith(SITE) and dm_control.__file__.startswith(SITE)
from opengato.tasks import get_task, list_tasks
names = list_tasks("metaworld") + list_tasks("dmc")
for name in names:
    env = get_task(name).make_env()
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_space.sample())
    env.close()
print("built and stepped", len(names), "tasks from the slimmed wheels")
"""


def check(dest: Path) -> None:
    """Build and step every Meta-World task and every shipped DMC task with the slimmed
    metaworld and dm_control first on the path."""
    with tempfile.TemporaryDirectory() as site:
        wheels = [str(p) for p in dest.glob("*.whl") if p.name.startswith(("metaworld", "dm_control"))]  # fmt: skip
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                        "--target", site, *wheels], check=True)  # fmt: skip
        code = CHECK_CODE.replace("SITE", repr(site))
        env = {"PYTHONPATH": site, "MUJOCO_GL": "disable", "PATH": "/usr/bin:/bin"}
        subprocess.run([sys.executable, "-c", code], check=True, env=env)


def main() -> None:
    dest = Path(".whl")
    dest.mkdir(exist_ok=True)
    download(dest)
    for wheel in dest.glob("metaworld-*.whl"):
        repack(wheel, lambda n: True, shrink_png)
    for wheel in dest.glob("dm_control-*.whl"):
        repack(wheel, lambda n: not n.startswith(DROP_DM_CONTROL))
    total = sum(p.stat().st_size for p in dest.glob("*.whl"))
    print(f".whl/: {len(list(dest.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB")
    if "--check" in sys.argv:
        check(dest)


if __name__ == "__main__":
    main()
