"""The folder that goes along to a GPU node without internet installs there: `make gpu-bundle`'s wheels
(built here, the sdist-only antlr4 runtime among them) install with --no-index into an empty folder, and every
package the first-node checks import comes from that folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# import names of what gpu_bundle.sh bundles (torch, Lightning, numpy, PyYAML are on the node already)
IMPORTS = ["hydra", "omegaconf", "antlr4", "webdataset", "braceexpand", "lpips", "torch_fidelity", "pytest",
           "pluggy", "iniconfig"]  # fmt: skip


@pytest.mark.process
def test_the_gpu_bundle_installs_offline_into_an_empty_folder_and_every_package_imports(tmp_path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    env = {**os.environ, "PYTHON": sys.executable}
    built = subprocess.run(["bash", "benchmarks/gpu_bundle.sh", "--wheels-dir", str(wheels), "--no-published"],
                           capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert any(
        p.name.startswith("antlr4_python3_runtime") for p in wheels.glob("*.whl")
    )  # built from its sdist
    assert f"{wheels}: " in built.stdout and "to carry:" in built.stdout  # the size report
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target),
         *map(str, sorted(wheels.glob("*.whl")))],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    probe = (
        "import importlib, sys; sys.path.insert(0, sys.argv[1]); bad = []\n"
        "for name in sys.argv[2:]:\n"
        "    m = importlib.import_module(name)\n"
        "    bad += [] if m.__file__.startswith(sys.argv[1]) else [f'{name} from {m.__file__}']\n"
        "print('outside the bundle:', bad) if bad else print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(target), *IMPORTS], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr[-2000:]
