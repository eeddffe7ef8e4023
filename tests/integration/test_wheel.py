"""An installed apihelper puts only ``apihelper*`` names into site-packages, and its console
scripts run from the wheel (not from this checkout)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

from tests.support import ROOT


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=600, cwd=cwd)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


def test_the_wheel_installs_one_import_root_and_working_scripts(tmp_path: Path) -> None:
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT))
    (wheel,) = (tmp_path / "dist").glob("apihelper-*.whl")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert all(top.startswith("apihelper") for top in tops), sorted(tops)
    assert "apihelper" in tops

    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel))
    site = Path(_run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    installed = {p.name for p in site.iterdir() if p.name != "__pycache__"}
    assert installed == {"apihelper", next(n for n in installed if n.endswith(".dist-info"))}, sorted(installed)

    # The dependencies come from this environment's site-packages (a plain path entry: its own
    # .pth files, among them this checkout's editable link, are not read), apihelper from the wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = _run(str(python), "-c", "import apihelper.service, sys; print(apihelper.service.__file__)", cwd=tmp_path)
    assert where.stdout.strip().startswith(str(site)), where.stdout
    for script in ("apihelper-serve", "apihelper-build", "apihelper-client", "apihelper-mcp"):
        assert "usage:" in _run(str(env / "bin" / script), "--help", cwd=tmp_path).stdout
