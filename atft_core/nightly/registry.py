"""The champion registry: which model the team trades, every model that ever was champion, and why.

Under the work root (`WorkRoot.registry`), mirrored to S3 with the runs::

    registry/
      models/<model id>/       checkpoint.pt (+ checkpoint.member{k}.pt), model.json: config, data
                               fingerprint, the last day it saw, its evidence. Written once, never changed.
      champions/0001.json ...  every champion entry in the order they took the seat
      champion.json            the current champion: a byte copy of the newest champions/ entry
      decisions.jsonl          one line per decision (nightly, by hand, rollback), appended
      ranks/ranks-DATE.parquet tomorrow's ranks of each night (`atft_core.nightly.ranks`)
      live/history.csv         the live record (`atft_core.nightly.live`)

A model id is the name of the run folder that trained it (unique, sorts by time). Rollback removes
the newest champions/ entry and copies the one below it back to champion.json, so the previous
champion is restored byte for byte (its model folder never changed). Every change takes a file
lock: the CLI and a nightly run can not interleave a promotion.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from atft_core.rundir import json_safe, write_json
from atft_core.train.predictor import member_paths

CHAMPION = "champion.json"


class RegistryError(ValueError):
    """A registry request that cannot be honoured as asked (no champion, unknown model, bad run folder)."""


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its folder and what model.json says about it."""

    model_id: str
    path: Path
    meta: dict[str, Any]

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def seen_until(self) -> str:
        """The last trading day whose label the model used (training or picking its epoch): YYYY-MM-DD."""
        return str(self.meta["seen_until"])


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- reading -------------------------------------------------------------------------------

    def champion(self) -> ModelEntry | None:
        """The current champion, or None before the first promotion."""
        entry = self.champion_entry()
        return None if entry is None else self.model(entry["model_id"])

    def champion_entry(self) -> dict[str, Any] | None:
        path = self.root / CHAMPION
        return json.loads(path.read_text()) if path.is_file() else None

    def model(self, model_id: str) -> ModelEntry:
        path = self.root / "models" / model_id
        if not (path / "model.json").is_file():
            known = ", ".join(self.model_ids()[-5:]) or "none yet"
            raise RegistryError(f"no model {model_id!r} in the registry {self.root} (newest: {known})")
        return ModelEntry(model_id, path, json.loads((path / "model.json").read_text()))

    def model_ids(self) -> list[str]:
        models = self.root / "models"
        return sorted(p.name for p in models.iterdir() if (p / "model.json").is_file()) if models.is_dir() else []

    def reigns(self) -> list[Path]:
        """champions/NNNN.json, oldest first: the entries that took the seat and still hold their place."""
        folder = self.root / "champions"
        return sorted(folder.glob("[0-9]*.json")) if folder.is_dir() else []

    def decisions(self) -> list[dict[str, Any]]:
        path = self.root / "decisions.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def changed_on(self, night: str) -> bool:
        """Whether a nightly decision already changed the champion for the panel date `night`."""
        return any(d.get("night") == night and d.get("promoted") and d.get("how") == "nightly"
                   for d in self.decisions())

    # ---- changing ------------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def add_model(self, run_dir: str | Path, meta: dict[str, Any]) -> ModelEntry:
        """Copy a run's checkpoint(s) into models/<run folder name>/ with `meta` as model.json.

        Idempotent: a model already registered under that name is returned as it is (a model never
        changes once registered). The copy is made in a temporary folder and renamed into place, so a
        crash never leaves half a model.
        """
        run = Path(run_dir)
        ckpt = run / "checkpoint.pt"
        if not ckpt.is_file():
            raise RegistryError(f"{run} has no checkpoint.pt: register a folder written by `atft train`, "
                                "`atft dryrun` or a nightly challenger")
        model_id = run.name
        final = self.root / "models" / model_id
        if (final / "model.json").is_file():
            return self.model(model_id)
        tmp = final.with_name(f".{model_id}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for src in member_paths(ckpt):
            shutil.copy2(src, tmp / src.name)
        write_json(tmp / "model.json", json_safe({**meta, "model_id": model_id, "source_run": str(run),
                                                  "registered_at": _now()}))
        tmp.rename(final)
        return self.model(model_id)

    def promote(self, model_id: str, *, how: str, night: str | None, decision: dict[str, Any]) -> dict[str, Any]:
        """Seat `model_id` as champion (a new champions/ entry, copied to champion.json); the decision is logged."""
        self.model(model_id)  # exists
        with self.locked():
            reigns = self.reigns()
            number = int(reigns[-1].stem) + 1 if reigns else 1
            entry = {"model_id": model_id, "since": _now(), "night": night, "how": how, "reign": number,
                     "previous": self.champion_entry()["model_id"] if self.champion_entry() else None}
            folder = self.root / "champions"
            folder.mkdir(parents=True, exist_ok=True)
            text = json.dumps(json_safe(entry), indent=2, sort_keys=True) + "\n"
            write_bytes_atomic(folder / f"{number:04d}.json", text.encode())
            write_bytes_atomic(self.root / CHAMPION, text.encode())
            self._log({**decision, "how": how, "night": night, "promoted": True, "champion": model_id})
        return entry

    def rollback(self) -> dict[str, Any]:
        """Put the previous champion back (byte for byte); the rolled-back entry is kept aside, not deleted."""
        with self.locked():
            reigns = self.reigns()
            if len(reigns) < 2:
                raise RegistryError("nothing to roll back to: the registry has "
                                    f"{'no champion' if not reigns else 'only its first champion'} "
                                    f"({self.root / CHAMPION})")
            newest, previous = reigns[-1], reigns[-2]
            aside = self.root / "champions" / "rolled-back"
            aside.mkdir(exist_ok=True)
            gone = json.loads(newest.read_text())["model_id"]
            write_bytes_atomic(self.root / CHAMPION, previous.read_bytes())
            newest.rename(aside / f"{newest.stem}-{_now().replace(':', '')}.json")
            back = json.loads(previous.read_text())
            self._log({"how": "rollback", "night": None, "promoted": True, "champion": back["model_id"],
                       "replaced": gone, "reason": f"rolled back from {gone}"})
        return back

    def record_decision(self, decision: dict[str, Any]) -> None:
        """Log a decision that left the champion as it was."""
        with self.locked():
            self._log({**decision, "promoted": False})

    def _log(self, decision: dict[str, Any]) -> None:
        with open(self.root / "decisions.jsonl", "a") as fh:
            fh.write(json.dumps(json_safe({**decision, "at": _now()}), sort_keys=True) + "\n")


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
