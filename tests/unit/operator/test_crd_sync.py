"""The committed CRD copies (kubectl manifests and the Helm chart) match the generated CRD."""

from __future__ import annotations

import pytest
import yaml

from tests.unit.operator.conftest import REPO_ROOT
from voicelane.operator.crd import CRD_COPIES, build_crd, crd_yaml

REFRESH = "stale: run `python -P -m voicelane.operator.crd --write` from the repository root and commit the result"


@pytest.mark.parametrize("relative", CRD_COPIES)
def test_committed_copy_is_the_generated_crd(relative: str) -> None:
    committed = (REPO_ROOT / relative).read_text(encoding="utf-8")
    assert yaml.safe_load(committed) == build_crd(), f"{relative}: {REFRESH}"
    assert committed == crd_yaml(), f"{relative}: {REFRESH}"


def test_write_refreshes_every_copy(tmp_path) -> None:
    from voicelane.operator.crd import main

    (tmp_path / "pyproject.toml").write_text("", encoding="utf-8")
    assert main(["--write", "--root", str(tmp_path)]) == 0
    for relative in CRD_COPIES:
        assert (tmp_path / relative).read_text(encoding="utf-8") == crd_yaml()


def test_write_refuses_a_directory_that_is_not_the_repository(tmp_path, capsys) -> None:
    from voicelane.operator.crd import main

    assert main(["--write", "--root", str(tmp_path)]) == 2
    assert "not the repository root" in capsys.readouterr().err
