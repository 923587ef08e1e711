"""Writing results: a study's JSON and figure, and the index of a run. Files only; no statistics here.

Everything is rendered in memory first, then written atomically (:func:`interp_tl.files.atomic_write`),
so an error never leaves a half-written file. Each study's figure comes from its registry record
(:data:`interp_tl.studies.STUDIES`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from html import escape
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


def circuitsvis_html(patterns: Mapping[str, Mapping]) -> bytes | None:
    """The head's attention patterns as circuitsvis' interactive view, or None where circuitsvis is not installed.

    circuitsvis renders with a script it imports from unpkg.com, so the page needs a network
    connection to show anything; ``index.html`` only links it and shows the static figure itself.
    """
    try:
        from circuitsvis.attention import attention_patterns
    except ImportError:
        return None
    import numpy as np

    parts = [f"<h2>{escape(lang)}: {escape(p['prompt'])}</h2>"
             + str(attention_patterns(tokens=list(p["tokens"]), attention=np.asarray(p["pattern"])[None]))
             for lang, p in patterns.items()]
    return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>attention patterns</title></head><body>'
            + "".join(parts) + "</body></html>\n").encode("utf-8")


def render_head(result: StudyResult) -> dict[str, bytes]:
    """Every file of an ``interp-tl head L.H`` report, in memory: JSON, the attention figure, circuitsvis' page.

    The figure shows the head's whole pattern on the first problem in each language; the
    circuitsvis page is written only where circuitsvis (the ``[viz]`` extra) is installed.
    """
    from interp_tl.figures import plot_patterns

    stem = f"head_{result.data['head']}"
    patterns = result.data["patterns"]
    figure = plot_patterns({lang: (p["pattern"], p["tokens"]) for lang, p in patterns.items()}, result.data["head"])
    files = {f"{stem}.json": json_bytes(result.to_dict()), f"{stem}.png": png_bytes(figure)}
    interactive = circuitsvis_html(patterns)
    if interactive is not None:
        files[f"{stem}_circuitsvis.html"] = interactive
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


#: The file names of ``interp-tl head L.H`` reports.
HEAD_FILE = re.compile(r"^head_(L\d+H\d+)\.json$")


def read_head_reports(out_dir: str | os.PathLike) -> list[StudyResult]:
    """Every ``head_L{l}H{h}.json`` report in ``out_dir``, by layer and head."""
    found = []
    for path in Path(out_dir).iterdir():
        match = HEAD_FILE.match(path.name)
        if match is None or not path.is_file():
            continue
        doc = json.loads(path.read_text("utf-8"))
        if doc.get("study") != "head" or doc.get("head") != match.group(1):
            continue
        data = {k: v for k, v in doc.items() if k not in ("study", "provenance")}
        found.append(StudyResult("head", data, doc.get("provenance", {})))
    return sorted(found, key=lambda r: [int(x) for x in re.findall(r"\d+", r.data["head"])])


def _head_entries(out: Path, heads: list[StudyResult]) -> list[dict]:
    entries = []
    for r in heads:
        stem = f"head_{r.data['head']}"
        files = [f"{stem}.json"] + [n for n in (f"{stem}.png", f"{stem}_circuitsvis.html") if (out / n).is_file()]
        entries.append({"head": r.data["head"], "files": files, "run": _summary(r.provenance)})
    return entries


def _index_html(out: Path, results: list[StudyResult], entries: list[dict], heads: list[StudyResult],
                head_entries: list[dict], mixed: bool) -> bytes:
    from interp_tl import htmlpage as html
    from interp_tl.studies import STUDIES
    from interp_tl.studies.heads import head_lines

    sections, titles = [], []
    for r, entry in zip(results, entries):
        study = STUDIES[r.study]
        sections.append(html.study_section(entry, r.provenance, study.table(r) if study.table else None))
        titles.append((r.study, r.study))
    for r, entry in zip(heads, head_entries):
        sections.append(html.head_section(entry, head_lines(r.data), r.provenance))
        titles.append((f"head-{entry['head']}", f"head {entry['head']}"))
    return html.page(sections, titles, mixed)


def write_index(out_dir: str | os.PathLike) -> list[Path]:
    """``index.json``, ``index.md`` and ``index.html`` rebuilt from the result files present in ``out_dir``.

    Each study is listed with its own headline, files and provenance (model, weights, prompts), so
    the index never describes another run than its files; when the files come from more than one
    run (another command-line run id, model or weights) the index says so at the top.
    ``index.html`` (:mod:`interp_tl.htmlpage`) adds each study's figure, key table and provenance, and
    the ``interp-tl head`` reports present (``head_L{l}H{h}.json``) with their attention patterns; a
    head report counts as another run only when it comes from another model, processing or weights.
    """
    from interp_tl.studies import STUDIES

    out = Path(out_dir)
    results = read_results(out)
    heads = read_head_reports(out)
    head_entries = _head_entries(out, heads)
    entries = []
    for r in results:
        files = [f"{r.study}.json"] + [n for n in (f"{r.study}.png",) if (out / n).is_file()]
        entries.append({"study": r.study, "files": files, "headline": STUDIES[r.study].headline(r),
                        "docs": STUDIES[r.study].docs, "run": _summary(r.provenance)})
    runs = {json.dumps([e["run"][k] for k in ("id", "model", "processing", "weights_fingerprint")]) for e in entries}
    models = {json.dumps([e["run"][k] for k in ("model", "processing", "weights_fingerprint")])
              for e in entries + head_entries}  # a head report is a later command on the same model
    mixed = len(runs) > 1 or len(models) > 1
    index = {"studies": entries, "heads": head_entries, "mixed_runs": mixed,
             "versions": (results or heads)[0].provenance.get("versions") if results or heads else None}
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
    for entry in head_entries:
        lines += [f"## head {entry['head']}", ""] + [f"- [{name}]({name})" for name in entry["files"]] + [""]
        if f"head_{entry['head']}.png" in entry["files"]:
            lines += [f"![head {entry['head']}](head_{entry['head']}.png)", ""]
    atomic_write(out / "index.md", "\n".join(lines).encode("utf-8"))
    atomic_write(out / "index.json", json_bytes(index))
    atomic_write(out / "index.html", _index_html(out, results, entries, heads, head_entries, mixed))
    return [out / "index.md", out / "index.json", out / "index.html"]
