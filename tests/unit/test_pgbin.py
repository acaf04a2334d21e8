"""PostgreSQL versions as picserve reads them: a program's, a cluster folder's, and their order."""

from pathlib import Path

import pytest

from picserve import errors
from picserve.tasks import embedded_pg, pgbin


@pytest.mark.parametrize(("version", "major"), [("18.6", "18"), ("15.18", "15"), ("10.0", "10"), ("9.6.24", "9.6")])
def test_a_version_has_its_major(version, major):
    assert pgbin.version_major(version) == major


def test_majors_order_as_numbers():
    assert sorted(["18", "9.6", "10", "15"], key=pgbin.major_key) == ["9.6", "10", "15", "18"]


def test_the_bundled_programs_are_found_and_tell_their_major():
    assert (pgbin.bundled_bindir() / "pg_dump").is_file()
    assert pgbin.major_key(pgbin.bundled_major()) >= (18,)


def test_a_folder_without_a_cluster_passes_and_one_of_another_major_is_refused_untouched(tmp_path: Path):
    assert pgbin.cluster_major(tmp_path / "pg") is None
    embedded_pg.check_cluster_version(tmp_path / "pg")
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / "PG_VERSION").write_text(pgbin.bundled_major() + "\n")
    embedded_pg.check_cluster_version(tmp_path / "pg")
    (tmp_path / "pg" / "PG_VERSION").write_text("9.6\n")
    with pytest.raises(
        errors.ClusterVersionMismatch, match=r"(?s)holds a PostgreSQL 9\.6 database.*picserve db upgrade"
    ):
        embedded_pg.check_cluster_version(tmp_path / "pg")
    assert [p.name for p in (tmp_path / "pg").iterdir()] == ["PG_VERSION"]
