"""Writing results: a study's JSON and figure, and the index of a run. Files only; no statistics here.

Everything is rendered in memory first, then written atomically (:func:`interp_tl.files.atomic_write`),
so an error never leaves a half-written file. Each study's figure comes from its registry record
(:data:`interp_tl.studies.STUDIES`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from interp_tl.errors import OutputPathError
from interp_tl.figures import png_bytes
from interp_tl.files import atomic_write
from interp_tl.results import StudyResult, json_bytes


def check_out_dir(path: str | os.PathLike) -> Path:
    """Check, creating nothing, that ``path`` can be (or already is) a writable output folder.

    Raises:
        OutputPathError: an empty path, a file in the way, or no write permission.
    """
    if str(path).strip() == "":
        raise OutputPathError("the output folder is an empty path: give one, e.g. --out results")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"cannot write to output folder {str(out)!r}: a file of that name is in the way")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"cannot write to output folder {str(out)!r}: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write to output folder {str(out)!r}: {str(existing)!r} is not writable")
    return out


def prepare_out_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check a file can be written there.

    Raises:
        OutputPathError: the folder cannot be created or written.
    """
    out = check_out_dir(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".interp_tl-probe-"):
            pass
    except OSError as exc:
        raise OutputPathError(f"cannot write to output folder {str(out)!r}: {exc.strerror or exc}") from None
    return out


class Staging:
    """A run's files land as a set: written into a staging folder, moved into ``out`` when complete.

    The staging folder is made beside ``out`` (in its nearest existing parent, so the final move is a
    rename on one filesystem) and removed on exit, also after an error or Ctrl-C; ``out`` itself is
    created only when the first set of files is committed.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = check_out_dir(out)
        self.dir: Path | None = None

    def __enter__(self) -> Staging:
        base = self.out.parent
        while not base.exists():
            base = base.parent
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name or 'out'}.interp_tl-staging-", dir=base))
        except OSError as exc:
            raise OutputPathError(
                f"cannot write beside output folder {str(self.out)!r}: {exc.strerror or exc}") from None
        return self

    def __exit__(self, *exc_info) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def commit(self, files: Mapping[str, bytes]) -> list[Path]:
        """Write ``files`` into the staging folder, then move them all into ``out``; their final paths.

        Raises:
            OutputPathError: a directory in ``out`` has the name of one of the files (checked
                before anything moves), or a write fails.
        """
        blocked = [name for name in files if (self.out / name).is_dir()]
        if blocked:
            raise OutputPathError(
                f"cannot write {str(self.out / blocked[0])!r}: a directory of that name is in the way")
        for name, data in files.items():
            atomic_write(self.dir / name, data)
        out = prepare_out_dir(self.out)
        for name in files:
            os.replace(self.dir / name, out / name)
        return [out / name for name in files]


def render(result: StudyResult) -> dict[str, bytes]:
    """Every file of a study, rendered in memory: ``{file name: bytes}`` (JSON and, for registered studies, PNG)."""
    from interp_tl.studies import STUDIES

    files = {f"{result.study}.json": json_bytes(result.to_dict())}
    if result.study in STUDIES:
        files[f"{result.study}.png"] = png_bytes(STUDIES[result.study].plot(result))
    return files


def write_files(files: Mapping[str, bytes], out_dir: str | os.PathLike) -> list[Path]:
    """Write rendered files atomically into ``out_dir``; their paths."""
    out = prepare_out_dir(out_dir)
    for name, data in files.items():
        atomic_write(out / name, data)
    return [out / name for name in files]


def write_result(result: StudyResult, out_dir: str | os.PathLike) -> list[Path]:
    """Render a study's JSON and PNG in memory, then write them atomically into ``out_dir``."""
    return write_files(render(result), out_dir)


def _summary(provenance: Mapping) -> dict:
    """The part of a result's provenance that says which run it came from."""
    model = provenance.get("model", {})
    prompts = provenance.get("prompts") or {}
    return {"id": (provenance.get("run") or {}).get("id"), "model": model.get("name"),
            "processing": model.get("processing"), "weights_fingerprint": model.get("weights_fingerprint"),
            "prompts": {k: prompts[k] for k in ("name", "n", "seed", "languages") if k in prompts} or None}


def read_results(out_dir: str | os.PathLike) -> list[StudyResult]:
    """Every study result file in ``out_dir`` (``<study>.json`` of a registered study), in registry order."""
    from interp_tl.studies import STUDIES

    out = Path(out_dir)
    found = []
    for name in STUDIES:
        path = out / f"{name}.json"
        if not path.is_file():
            continue
        doc = json.loads(path.read_text("utf-8"))
        if doc.get("study") != name:
            continue
        data = {k: v for k, v in doc.items() if k not in ("study", "provenance")}
        found.append(StudyResult(name, data, doc.get("provenance", {})))
    return found


def write_index(out_dir: str | os.PathLike) -> list[Path]:
    """``index.json`` and ``index.md`` rebuilt from the result files present in ``out_dir``.

    Each study is listed with its own headline, files and provenance (model, weights, prompts), so
    the index never describes another run than its files; when the files come from more than one
    run (another command-line run id, model or weights) the index says so at the top.
    """
    from interp_tl.studies import STUDIES

    out = Path(out_dir)
    results = read_results(out)
    entries = []
    for r in results:
        files = [f"{r.study}.json"] + [n for n in (f"{r.study}.png",) if (out / n).is_file()]
        entries.append({"study": r.study, "files": files, "headline": STUDIES[r.study].headline(r),
                        "docs": STUDIES[r.study].docs, "run": _summary(r.provenance)})
    runs = {json.dumps([e["run"][k] for k in ("id", "model", "processing", "weights_fingerprint")]) for e in entries}
    mixed = len(runs) > 1
    index = {"studies": entries, "mixed_runs": mixed,
             "versions": results[0].provenance.get("versions") if results else None}
    lines = ["# interp_tl results", ""]
    if mixed:
        lines += ["**These files come from more than one run** (different commands, models or weights): "
                  "read each study's own line below.", ""]
    for entry in entries:
        run = entry["run"]
        prompts = run["prompts"]
        where = f"; prompts {prompts['name']} n={prompts['n']} seed={prompts['seed']}" if prompts else ""
        lines += [f"## {entry['study']}", "", entry["headline"], "",
                  f"Model `{run['model']}` (processing `{run['processing']}`, weights {run['weights_fingerprint']})"
                  f"{where}. Method and keys: `{entry['docs']}`.", ""]
        lines += [f"- [{name}]({name})" for name in entry["files"]] + [""]
        if f"{entry['study']}.png" in entry["files"]:
            lines += [f"![{entry['study']}]({entry['study']}.png)", ""]
    atomic_write(out / "index.md", "\n".join(lines).encode("utf-8"))
    atomic_write(out / "index.json", json_bytes(index))
    return [out / "index.md", out / "index.json"]
