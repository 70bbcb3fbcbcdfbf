"""docs/make_schematic.py draws the README's three-regime schematic (a PNG of about 900x500)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "make_schematic.py"


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_script_writes_the_schematic_where_asked(tmp_path):
    out = tmp_path / "pictures" / "schematic.png"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**{k: v for k, v in os.environ.items()
                                  if k not in ("DISPLAY", "MPLBACKEND")},
                               "MPLCONFIGDIR": str(tmp_path / "mpl")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out)
    assert _png_size(out) == (900, 500)
    assert out.stat().st_size > 20_000          # drawn regions and text, not an empty canvas


def test_readme_shows_the_committed_schematic_first():
    readme = (ROOT / "README.md").read_text()
    schematic = readme.index("](docs/three_regimes.png)")
    assert schematic < readme.index("## Entry points") < readme.index("](docs/phase_diagrams.png)")
    assert _png_size(ROOT / "docs" / "three_regimes.png") == (900, 500)
