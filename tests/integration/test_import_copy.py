"""`models import --copy`: weights copied into the store, registered, and independent of the source."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import cli


def test_import_in_place_and_with_copy(home: Path, tiny_model: Path, tmp_path: Path) -> None:
    source = tmp_path / "downloaded-by-hand"
    shutil.copytree(tiny_model, source)
    in_place = cli("models", "import", str(source), "--name", "hand/in-place", "--json")
    assert in_place.returncode == 0, in_place.stderr
    assert json.loads(in_place.stdout.splitlines()[-1])["path"] == str(source)

    copied = cli("models", "import", str(source), "--name", "hand/copied", "--copy", "--json")
    assert copied.returncode == 0, copied.stderr
    dest = Path(json.loads(copied.stdout.splitlines()[-1])["path"])
    assert dest != source and dest.is_relative_to(home) and (dest / "config.json").is_file()
    shutil.rmtree(source)  # the copy does not depend on the original
    assert cli("models", "verify", "hand/copied").returncode == 0
    assert cli("models", "verify", "hand/in-place").returncode == 1
    again = cli("models", "import", str(tiny_model), "--name", "hand/copied", "--copy")
    assert again.returncode == 1 and "hint:" in again.stderr
