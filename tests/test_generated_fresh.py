"""The committed generated code matches what its script makes from proto/: the test
service's stubs (scripts/gen-proto.sh -> tests/support/gen) and the console's
(scripts/gen-console-proto.sh -> src/actions/_gen)."""

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _files(base: Path) -> set[Path]:
    return {
        p.relative_to(base) for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.mark.parametrize(
    ("script", "committed"),
    [
        ("gen-proto.sh", ROOT / "tests" / "support" / "gen"),
        ("gen-console-proto.sh", ROOT / "src" / "actions" / "_gen"),
    ],
)
def test_generated_code_is_fresh(tmp_path: Path, script: str, committed: Path) -> None:
    env_python = Path(sys.executable).parent
    subprocess.run(
        [str(ROOT / "scripts" / script), str(tmp_path)],
        check=True,
        cwd=ROOT,
        env={"PATH": f"{env_python}:/usr/bin:/bin"},
    )
    assert _files(tmp_path) == _files(committed), f"run scripts/{script}"
    for rel in _files(tmp_path):
        assert filecmp.cmp(tmp_path / rel, committed / rel, shallow=False), (
            f"{rel} is stale: run scripts/{script}"
        )
