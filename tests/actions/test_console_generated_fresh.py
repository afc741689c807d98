"""The committed console code under src/actions/_gen matches what
scripts/gen-console-proto.sh makes from proto/actions."""

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "src" / "actions" / "_gen"


def _files(base: Path) -> set[Path]:
    return {
        p.relative_to(base) for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }


def test_console_generated_code_is_fresh(tmp_path: Path) -> None:
    env_python = Path(sys.executable).parent
    subprocess.run(
        [str(ROOT / "scripts" / "gen-console-proto.sh"), str(tmp_path)],
        check=True,
        cwd=ROOT,
        env={"PATH": f"{env_python}:/usr/bin:/bin"},
    )
    assert _files(tmp_path) == _files(COMMITTED), "run scripts/gen-console-proto.sh"
    for rel in _files(tmp_path):
        assert filecmp.cmp(tmp_path / rel, COMMITTED / rel, shallow=False), (
            f"{rel} is stale: run scripts/gen-console-proto.sh"
        )
