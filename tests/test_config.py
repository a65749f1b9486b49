"""Settings: where the state folder is found."""

from __future__ import annotations


def test_the_state_folder_is_found_from_a_subfolder(tmp_path):
    from curation.config import find_home

    (tmp_path / ".curation" / "pg").mkdir(parents=True)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_home(deep) == tmp_path / ".curation"
    elsewhere = tmp_path.parent / (tmp_path.name + "-other")
    elsewhere.mkdir()
    assert find_home(elsewhere) == elsewhere / ".curation"
