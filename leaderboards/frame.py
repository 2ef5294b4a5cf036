"""Results as a pandas DataFrame, for notebooks: `leaderboards.load("results.db")`."""
from __future__ import annotations

import os
from typing import Any

from .board import file_sha256, model_identity, model_metadata
from .store import ResultStore
from .threats import Threat, corruption_name, is_corruption

COLUMNS = ("run_id", "tag", "created", "finished", "model", "dataset", "attack", "norm", "eps", "threat",
           "corruption", "severity", "n", "clean_accuracy", "accuracy", "ci_low", "ci_high", "seconds", "forward",
           "backward", "params", "arch", "extra_data", "paper", "weights_sha256", "file_sha256", "newest")


def load(db: str | os.PathLike[str] | ResultStore, *, include_unfinished: bool = False) -> Any:
    """One row per (run, model, threat) from the `results` aggregates; accuracies are fractions.

    `newest` marks the rows a leaderboard would show (the newest complete run per model, data set and
    threat, where a model is its label with its weights: two checkpoints under one label are two models). `corruption`/`severity` are filled for corruption results (attack `corruption:NAME`).
    Unfinished runs have no aggregates yet; `include_unfinished` only matters for runs finished by
    other means."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("leaderboards.load needs pandas: pip install pandas (or robust-bench[dev])") from None
    store = db if isinstance(db, ResultStore) else ResultStore(db, create=False)
    try:
        runs = {r.run_id: r for r in store.runs()}
        order = {rid: i for i, rid in enumerate(runs)}
        infos = {(m["run_id"], m["model"]): m["info"] for m in store.model_infos()}
        records = []
        newest: dict[tuple[str, str | None, str, Threat], tuple[int, int]] = {}
        for r in store.results():
            run = runs.get(r.run_id)
            if run is None or (run.status != "complete" and not include_unfinished):
                continue
            info = infos.get((r.run_id, r.model), {})
            meta = model_metadata(info)
            minfo = info.get("model") if isinstance(info.get("model"), dict) else {}
            t = Threat(r.attack, r.norm, float(r.eps))
            corr = is_corruption(r.attack)
            records.append({"run_id": r.run_id, "tag": run.tag, "created": run.created, "finished": run.finished,
                            "model": r.model, "dataset": r.dataset, "attack": r.attack, "norm": r.norm,
                            "eps": float(r.eps), "threat": t.label(), "corruption": corruption_name(r.attack)
                            if corr else None, "severity": int(round(r.eps)) if corr else None, "n": r.n,
                            "clean_accuracy": r.clean_accuracy, "accuracy": r.accuracy, "ci_low": r.ci95[0],
                            "ci_high": r.ci95[1], "seconds": r.seconds, "forward": r.forward,
                            "backward": r.backward, "params": r.params, "arch": meta["arch"],
                            "extra_data": meta["extra_data"], "paper": meta["paper_url"] or meta["paper"],
                            "weights_sha256": minfo.get("weights_sha256"), "file_sha256": file_sha256(info),
                            "newest": False})
            if run.status == "complete":
                key = (r.model, model_identity(info), r.dataset, t)
                cand = (order[r.run_id], len(records) - 1)
                if key not in newest or cand > newest[key]:
                    newest[key] = cand
        for _, i in newest.values():
            records[i]["newest"] = True
    finally:
        if not isinstance(db, ResultStore):
            store.close()
    frame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    if len(frame):
        frame["created"] = pd.to_datetime(frame["created"], errors="coerce", utc=True)
        frame["finished"] = pd.to_datetime(frame["finished"], errors="coerce", utc=True)
    return frame
