"""Start-up (issue 14 target 5): `robust-bench list` replays the text a live listing prints without importing
torch, under a key that changes with any source file; the CLI makes OpenMP wait passively unless told
otherwise."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import ROOT

PROBE = ("import sys; from robustness.cli import main; code = main(['list', sys.argv[1]]); "
         "sys.stderr.write('TORCH_LOADED=%d\\n' % ('torch' in sys.modules)); sys.exit(code)")


def _list(what: str, cache) -> tuple[str, bool]:
    env = {**os.environ, "ROBUST_BENCH_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", PROBE, what], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, "TORCH_LOADED=1" in r.stderr


@pytest.mark.parametrize("what", ["models", "attacks"])
def test_list_replays_the_live_text_without_torch(tmp_path, what):
    live, torch_live = _list(what, tmp_path)
    replay, torch_replay = _list(what, tmp_path)
    assert torch_live and not torch_replay
    assert replay == live and len(live.splitlines()) > 10
    assert len(list(tmp_path.glob(f"list-{what}-*.txt"))) == 1


def test_the_key_covers_every_source_file(tmp_path, monkeypatch):
    from robustness.cli import _listing_cache as lc
    for pkg in lc._SOURCES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(lc, "_ROOT", tmp_path)
    before = lc.key("models")
    (tmp_path / "attacks" / "a.py").write_text("x = 2\n")
    assert lc.key("models") != before
    (tmp_path / "attacks" / "a.py").write_text("x = 1\n")
    assert lc.key("models") == before and lc.key("attacks") != before


def test_in_a_process_that_imported_attacks_the_listing_is_live(cli, tmp_path, monkeypatch):
    """A program may have registered an attack: no replay (and nothing recorded) there."""
    import attacks  # noqa: F401
    monkeypatch.setenv("ROBUST_BENCH_CACHE", str(tmp_path))
    r = cli("list", "attacks")
    assert r.code == 0 and "pgd" in r.out
    assert not list(tmp_path.iterdir())


def test_the_cli_sets_a_passive_openmp_wait_unless_the_user_chose(cli, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cli("--help")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cli("--help")
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
