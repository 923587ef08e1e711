"""Writing results: a study's JSON and figure, and the index of a run. Files only; no statistics here.

Everything is rendered in memory first, then written atomically (:func:`interp_tl.files.atomic_write`),
so an error never leaves a half-written file. Each study's figure comes from its registry record
(:data:`interp_tl.studies.STUDIES`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from interp_tl.errors import OutputPathError
from interp_tl.figures import png_bytes
from interp_tl.files import atomic_write
from interp_tl.results import StudyResult, json_bytes


def prepare_out_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check a file can be written there (before any work is done).

    Raises:
        OutputPathError: the folder cannot be created or written.
    """
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".interp_tl-probe-"):
            pass
    except OSError as exc:
        raise OutputPathError(f"cannot write to output folder {str(out)!r}: {exc.strerror or exc}") from None
    return out


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


def write_index(
    out_dir: str | os.PathLike, results: Sequence[StudyResult], files: Mapping[str, Sequence[Path]]
) -> None:
    """``index.json`` and ``index.md``: which studies ran, their files and headline numbers."""
    from interp_tl.studies import STUDIES

    out = Path(out_dir)
    entries = [
        {"study": r.study, "files": [p.name for p in files[r.study]], "headline": STUDIES[r.study].headline(r)}
        for r in results
    ]
    first = results[0].provenance if results else {}
    index = {"studies": entries, "model": first.get("model"), "versions": first.get("versions")}
    lines = ["# interp_tl results", ""]
    if results:
        model = first["model"]
        prompts = next((r.provenance["prompts"] for r in results if "prompts" in r.provenance), None)
        where = f", prompts {prompts['name']} n={prompts['n']} seed={prompts['seed']}" if prompts else ""
        lines += [f"Model `{model['name']}` (processing `{model['processing']}`){where}.", ""]
    for entry in entries:
        lines += [f"## {entry['study']}", "", entry["headline"], ""]
        lines += [f"- [{name}]({name})" for name in entry["files"]] + [""]
        if f"{entry['study']}.png" in entry["files"]:
            lines += [f"![{entry['study']}]({entry['study']}.png)", ""]
    atomic_write(out / "index.md", "\n".join(lines).encode("utf-8"))
    atomic_write(out / "index.json", json_bytes(index))
