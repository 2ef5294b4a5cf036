"""Outputs never delete or replace what robust-bench did not write: `site`, `plot`, `compare --junit`,
`leaderboard --out` next to a user's files, and no parent folders created on the way."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from leaderboards import ResultStore
from leaderboards.synthetic import add_synthetic_run


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "results.db"
    with ResultStore(path) as s:
        add_synthetic_run(s, models={"a": 0.2, "b": 0.6}, attacks=["pgd"], eps=[0.1, 0.2], n=20, seed=1,
                          run_key="k1")
        add_synthetic_run(s, models={"a": 0.2, "b": 0.5}, attacks=["pgd"], eps=[0.1, 0.2], n=20, seed=1,
                          run_key="k2", indices=range(20))
    return path


def _user_files(root: Path) -> dict[Path, str]:
    """A user's own work where site/plot outputs might land (RobustBench's default ./models among them)."""
    files = {root / "models" / "cifar10" / "Linf" / "Standard.pt": "weights",
             root / "plots" / "mine.png": "my plot", root / "notes.txt": "notes"}
    for p, text in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return {p: t for p, t in files.items()}


def _intact(files: dict[Path, str]) -> None:
    for p, text in files.items():
        assert p.is_file() and p.read_text() == text, f"{p} was deleted or changed"


def _one_line(res) -> None:
    assert res.code == 2, res
    assert len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err, res


def test_site_into_a_folder_with_foreign_files_is_refused(db, tmp_path, cli):
    files = _user_files(tmp_path)
    res = cli("site", "--db", db, "--out", tmp_path, "--no-plots")
    _one_line(res)
    _intact(files)
    assert not (tmp_path / "index.html").exists()


def test_site_rebuild_replaces_only_its_own_files(db, tmp_path, cli):
    out = tmp_path / "site"
    assert cli("site", "--db", db, "--out", out).code == 0
    pages = sorted(p.name for p in (out / "models").iterdir())
    assert pages and (out / "index.html").is_file() and list((out / "plots").iterdir())
    mine = {out / "models" / "my-notes.txt": "keep", out / "README.txt": "keep too"}
    for p, text in mine.items():
        p.write_text(text)
    # a rebuild with fewer models drops the pages it wrote before, not the user's files
    res = cli("site", "--db", db, "--out", out, "--model", "a", "--no-plots")
    assert res.code == 0, res
    _intact(mine)
    assert len([p for p in (out / "models").iterdir() if p.suffix == ".html"]) == 1
    assert not (out / "plots").exists() or not any((out / "plots").iterdir())


def test_site_never_overwrites_a_file_it_did_not_write(db, tmp_path, cli):
    out = tmp_path / "site"
    assert cli("site", "--db", db, "--out", out, "--no-plots").code == 0
    (out / "plots").mkdir(exist_ok=True)
    (out / "plots" / "eps.png").write_text("user's plot under the name the site uses")
    res = cli("site", "--db", db, "--out", out)
    _one_line(res)
    assert (out / "plots" / "eps.png").read_text() == "user's plot under the name the site uses"


def test_site_into_an_empty_folder_works(db, tmp_path, cli):
    out = tmp_path / "empty"
    out.mkdir()
    assert cli("site", "--db", db, "--out", out, "--no-plots").code == 0
    assert (out / "index.html").is_file()


def test_site_creates_no_parent_folders(db, tmp_path, cli):
    res = cli("site", "--db", db, "--out", tmp_path / "no" / "such" / "site")
    _one_line(res)
    assert not (tmp_path / "no").exists()


def test_site_in_an_unwritable_place_is_one_line(db, tmp_path, cli):
    from tests.security.test_store import _make_unwritable
    ro = tmp_path / "ro"
    ro.mkdir()
    restore = _make_unwritable([ro])
    try:
        _one_line(cli("site", "--db", db, "--out", ro / "site"))
    finally:
        restore()
    assert not (ro / "site").exists()


def test_site_write_failure_is_one_line(db, tmp_path, cli, monkeypatch):
    """What a read-only disk or a full one does (the chmod test above cannot, run as root)."""
    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "write_text", denied)
    _one_line(cli("site", "--db", db, "--out", tmp_path / "site", "--no-plots"))


def test_plot_creates_no_parent_folders_and_keeps_neighbours(db, tmp_path, cli):
    files = _user_files(tmp_path)
    res = cli("plot", "--db", db, "--kind", "eps", "--out", tmp_path / "no" / "such" / "eps.png")
    _one_line(res)
    assert not (tmp_path / "no").exists()
    assert cli("plot", "--db", db, "--kind", "eps", "--out", tmp_path / "plots" / "eps.png").code == 0
    _intact(files)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_compare_outputs_create_no_folders_and_never_overwrite_the_store(db, tmp_path, cli):
    with ResultStore(db, create=False) as s:
        a, b = (r.run_id for r in s.runs())
    before = _sha(db)
    for flag in ("--junit", "--summary"):
        res = cli("compare", a, b, "--db", db, flag, tmp_path / "no" / "such" / "out.xml")
        _one_line(res)
        assert not (tmp_path / "no").exists()
    res = cli("compare", a, b, "--db", db, "--junit", db)
    _one_line(res)
    assert _sha(db) == before
    res = cli("compare", a, b, "--db", db, "--junit", tmp_path)   # a folder
    _one_line(res)


def test_leaderboard_out_onto_a_folder_or_the_store_is_one_line(db, tmp_path, cli):
    before = _sha(db)
    _one_line(cli("leaderboard", "--db", db, "--out", tmp_path))
    _one_line(cli("leaderboard", "--db", db, "--out", db))
    assert _sha(db) == before
