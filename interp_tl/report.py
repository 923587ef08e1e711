"""Writing results: JSON, PNG and npz files, atomically, and the index of a multi-study run.

Everything a study writes is rendered in memory first; files are then written to a temporary
name in the target folder and renamed into place, so an error never leaves a half-written file.
Plots use matplotlib's Agg backend and live here, at the edge: the studies never import this.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from interp_tl.errors import OutputPathError
from interp_tl.studies.common import StudyResult


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


def _file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (mkstemp's is 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The file gets the permissions of a normally created file (umask applied), not mkstemp's 0600.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputPathError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputPathError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if np.isfinite(value) else None
    return obj


def json_bytes(obj: Any) -> bytes:
    """Strict JSON (NaN/inf become null, numpy scalars and arrays become plain numbers)."""
    return (json.dumps(_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A compressed ``.npz`` of the arrays, in memory (read back with ``allow_pickle=False``)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def _figure_png(draw: Callable[[Any], None], size: tuple[float, float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    draw(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _title(result: StudyResult) -> str:
    data = result.data
    langs = "/".join(data.get("languages", []))
    model = result.provenance["model"]
    return f"{model['name']} ({model['processing']}), {langs}, n={result.provenance['prompts']['n']}"


def _layer_head_heatmap(fig, ax, grid: np.ndarray, title: str, signed: bool = False,
                        limits: tuple[float | None, float | None] = (None, None)) -> None:
    """A layer x head heatmap with integer ticks; ``signed`` centres a red-blue scale on 0."""
    if signed:
        bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        limits, cmap = (-bound, bound), "RdBu_r"
    else:
        cmap = "viridis"
    image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=limits[0], vmax=limits[1])
    ax.set(xlabel="head", ylabel="layer", title=title)
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    fig.colorbar(image, ax=ax, fraction=0.05)


def plot_alignment(result: StudyResult) -> bytes:
    """Alignment z per layer before/after attention/after MLP (left) and Δz of attention vs MLP (right)."""
    rows = result.data["layer_results"]
    layers = np.array([r["layer"] for r in rows])

    def value(key: str) -> np.ndarray:
        return np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)

    from matplotlib.ticker import MaxNLocator

    shares = result.data.get("head_shares")

    def draw(fig) -> None:
        if shares:
            left, right, heat = fig.subplots(1, 3, gridspec_kw={"width_ratios": [3, 3, 2]})
            grid = np.array([[np.nan if v is None else v for v in row] for row in shares["heads"]], dtype=float)
            _layer_head_heatmap(fig, heat, grid, f"head shares of the gap at layer {shares['layer']}", signed=True)
        else:
            left, right = fig.subplots(1, 2)
        for key, label in (("z_pre", "resid_pre"), ("z_post_attn", "+ attn"), ("z_post_mlp", "+ mlp")):
            left.plot(layers, value(key), marker="o", ms=3, label=label)
        left.axhline(0, color="grey", lw=0.5)
        left.set(xlabel="layer", ylabel="matched-vs-scrambled z", title="alignment of the residual")
        left.legend()
        width = 0.4
        right.bar(layers - width / 2, value("dz_attn"), width, label="Δz attention")
        right.bar(layers + width / 2, value("dz_mlp"), width, label="Δz MLP")
        right.axhline(0, color="grey", lw=0.5)
        right.set(xlabel="layer", ylabel="Δz", title="Δz per sublayer (not additive)")
        right.legend()
        for ax in (left, right):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(_title(result), fontsize=9)

    return _figure_png(draw, (15, 4) if shares else (11, 4))


def plot_embedding(result: StudyResult) -> bytes:
    """Alignment z of embedding variants vs layer 0 (left), PCA scree (middle), PC0 by language (right)."""
    data = result.data
    bars = [("embed\nlast", data["z_raw_embed_last_token"]), ("embed\nmean", data["z_raw_embed_mean_no_bos"])]
    if data.get("has_pos_embed"):
        bars += [("embed+pos\nlast", data["z_embed_pos_last_token"]),
                 ("embed+pos\nmean", data["z_embed_pos_mean_no_bos"])]
    bars.append(("L0 out\nlast", data["z_l0_output_last_token"]))
    langs = data.get("languages", ["a", "b"])

    def draw(fig) -> None:
        ax_z, ax_pca, ax_pc0 = fig.subplots(1, 3)
        ax_z.bar(range(len(bars)), [np.nan if v is None else v for _, v in bars], color="tab:blue")
        ax_z.set_xticks(range(len(bars)), [b for b, _ in bars], fontsize=7)
        ax_z.axhline(0, color="grey", lw=0.5)
        ax_z.set(ylabel="matched-vs-scrambled z", title="embedding vs layer 0")
        varexp = data["embedding_pca_varexp"]
        ax_pca.bar(range(len(varexp)), varexp)
        ax_pca.set(xlabel="PC", ylabel="variance explained", title="PCA of unit last-token embeddings")
        pc0 = data["pc0_projections"]["embed"]
        ax_pc0.hist(pc0[0], bins=30, alpha=0.6, label=langs[0])
        ax_pc0.hist(pc0[1], bins=30, alpha=0.6, label=langs[1])
        d = data["embedding_cohen_d_pc0"]
        ax_pc0.set(xlabel="PC0", title=f"PC0 by language (Cohen's d {d:.2f})" if d is not None else "PC0")
        ax_pc0.legend()
        fig.suptitle(_title(result), fontsize=9)

    return _figure_png(draw, (13, 4))


def plot_surgery(result: StudyResult) -> bytes:
    """Kernel surgery: accuracy, language preservation and the dose-response sweep.

    Left and middle: per language, baseline / surgery / random control. Right: mean accuracy
    against k for each alpha, language and random subspaces.
    """
    data = result.data
    conditions = (("baseline", "baseline"), ("surgery", "surgery"), ("random_control", "random control"))
    langs = [r["lang"] for r in data["baseline"]]
    x = np.arange(len(langs))

    def draw(fig) -> None:
        ax_acc, ax_lang, ax_sweep = fig.subplots(1, 3)
        width = 0.27
        for i, (key, label) in enumerate(conditions):
            rows = data[key]
            ax_acc.bar(x + (i - 1) * width, [r["accuracy"] for r in rows], width, label=label)
            kept = [r["lang_preservation"]["preserved"] for r in rows]
            ax_lang.bar(x + (i - 1) * width, [np.nan if v is None else v for v in kept], width, label=label)
        ax_acc.set_xticks(x, langs)
        ax_acc.set(ylim=(0, 1.05), ylabel="accuracy (answer among generated numbers)", title="accuracy")
        ax_acc.legend(fontsize=7)
        ax_lang.set_xticks(x, langs)
        ax_lang.set(ylim=(0, 1.05), ylabel="outputs in the prompt's language", title="language preservation")
        if all(r["lang_preservation"]["preserved"] is None for key, _ in conditions for r in data[key]):
            ax_lang.text(0.5, 0.5, "no output has letters\n(answers are digits only)", ha="center", va="center",
                         transform=ax_lang.transAxes, fontsize=8)
        for kind, style in (("language", "-"), ("random", "--")):
            for alpha in sorted({s["alpha"] for s in data["sweep"]}):
                pts = sorted((s["k"], s["mean_accuracy"]) for s in data["sweep"]
                             if s["subspace"] == kind and s["alpha"] == alpha)
                if pts:
                    ax_sweep.plot(*zip(*pts), style, marker="o", ms=3, label=f"{kind} α={alpha:g}")
        ax_sweep.axhline(data["summary"]["baseline_mean_accuracy"], color="k", lw=0.8, label="baseline")
        ax_sweep.set(ylim=(0, 1.05), xscale="log", xlabel="k (axes removed per layer)", ylabel="mean accuracy",
                     title="dose-response")
        ax_sweep.legend(fontsize=6)
        model = result.provenance["model"]
        fig.suptitle(f"{model['name']} ({model['processing']}), layers {data['surgery_layers']}, "
                     f"k={data['n_lang_dims']}, α={data['alpha']:g}, {data['n_test_problems']} problems", fontsize=9)

    return _figure_png(draw, (15, 4))


def plot_layers(result: StudyResult) -> bytes:
    """Layer variation: distances per layer pair and family, and the nulls.

    Left: heatmap of distance per consecutive layer pair x family/alignment. Right: per family,
    the mean adjacent distance against the two nulls.
    """
    data = result.data
    columns = list(data["family_stats"])
    from interp_tl.studies.layers import _flat

    grid = np.array([[_flat(e)[c] for c in columns] for e in data["pairs"]])
    labels = [f"{a}-{b}" for a, b in (e["pair"] for e in data["pairs"])]
    true = data["ranking"]

    def draw(fig) -> None:
        left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
        image = left.imshow(grid, aspect="auto", cmap="viridis")
        left.set_xticks(range(len(columns)), columns, rotation=90, fontsize=6)
        left.set_yticks(range(len(labels)), labels, fontsize=7)
        left.set(ylabel="layer pair", title="||unit(X_a) R - unit(X_b)||_F")
        fig.colorbar(image, ax=left, fraction=0.03)
        y = np.arange(len(true))
        right.barh(y, [data["family_stats"][c]["mean"] for c in true], height=0.35, label="adjacent pairs")
        far = data["nulls"]["non_adjacent"]["family_stats"]
        if far:
            right.plot([far[c]["mean"] for c in true], y, "k|", ms=10, label="non-adjacent pairs")
        rnd = data["nulls"]["random_same_spectrum"]["family_stats"]
        right.plot([rnd[c]["mean"] for c in true], y, "rx", label="random, same spectrum")
        right.set_yticks(y, true, fontsize=7)
        right.set(xlabel="mean distance", title="under the true symmetries, with nulls")
        right.legend(fontsize=7)
        model = result.provenance["model"]
        fig.suptitle(f"{model['name']} ({model['processing']}), block {data['block']}", fontsize=9)

    return _figure_png(draw, (14, 5))


def plot_jacobian(result: StudyResult) -> bytes:
    """Attention Jacobian: layer x head heatmaps of cos_diag, cos_ste and r_diag, and W_Q/W_K gradient cosines."""
    data = result.data
    tables = data["layers"]

    def draw(fig) -> None:
        axes = fig.subplots(1, 4)
        for ax, key, limits in zip(axes[:3], ("cos_diag", "cos_ste", "r_diag"), ((-1, 1), (-1, 1), (0, None))):
            _layer_head_heatmap(fig, ax, np.array(tables[key], dtype=float), key, limits=limits)
        ax = axes[3]
        for kind, values in data.get("weight_gradient_cos", {}).items():
            ax.plot(range(len(values)), [np.nan if v is None else v for v in values], marker="o", label=kind)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(xlabel="layer", ylabel="cosine to the true gradient", title="W_Q/W_K gradient", ylim=(-1, 1.05))
        ax.legend(fontsize=7)
        model = result.provenance["model"]
        fig.suptitle(f"{model['name']} ({model['processing']}), {data['n_sequences']} sequences", fontsize=9)

    return _figure_png(draw, (16, 4))


def plot_heads(result: StudyResult) -> bytes:
    """Per-head shares of the alignment gap: layer x head heatmap (left), all writers with bands (right)."""
    data = result.data
    grid = np.array(data["head_shares"], dtype=float)
    writers = data["writers"]

    def draw(fig) -> None:
        left, right = fig.subplots(1, 2)
        _layer_head_heatmap(fig, left, grid, f"head shares of the gap at layer {data['layer']}", signed=True)
        y = np.arange(len(writers))
        shares = [w["share"] for w in writers]
        right.barh(y, shares, color=["tab:red" if s > 0 else "tab:blue" for s in shares])
        lo = [w["band"][0] for w in writers]
        hi = [w["band"][1] for w in writers]
        right.hlines(y, lo, hi, color="k", lw=2, label="permutation band")
        right.set_yticks(y, [w["name"] for w in writers], fontsize=5)
        right.invert_yaxis()
        right.set(xlabel="share of matched − null mean cosine", title=f"all writers (sum {data['total']:.3f})")
        right.legend(fontsize=7)
        model = result.provenance["model"]
        fig.suptitle(f"{model['name']} ({model['processing']}), {'/'.join(data['languages'])}", fontsize=9)

    return _figure_png(draw, (13, max(4, 0.12 * len(writers))))


PLOTS: dict[str, Callable[[StudyResult], bytes]] = {
    "heads": plot_heads,
    "alignment": plot_alignment, "embedding": plot_embedding, "surgery": plot_surgery, "layers": plot_layers,
    "jacobian": plot_jacobian,
}


def render(result: StudyResult, save_activations: bool = False) -> dict[str, bytes]:
    """Every file of a study, rendered in memory: ``{file name: bytes}``."""
    files = {f"{result.study}.json": json_bytes(result.to_dict()), f"{result.study}.png": PLOTS[result.study](result)}
    if save_activations:
        files[f"{result.study}_activations.npz"] = npz_bytes(result.arrays)
    return files


def write_result(result: StudyResult, out_dir: str | os.PathLike, save_activations: bool = False) -> list[Path]:
    """Render a study's JSON, PNG (and npz) in memory, then write them atomically into ``out_dir``."""
    out = prepare_out_dir(out_dir)
    files = render(result, save_activations)
    for name, data in files.items():
        atomic_write(out / name, data)
    return [out / name for name in files]


def headline(result: StudyResult) -> str:
    """One line of a study's main numbers, for the terminal and the index."""
    data = result.data
    if result.study == "alignment":
        zs = [r["z_post_mlp"] for r in data["layer_results"]]
        best = max(range(len(zs)), key=lambda i: -np.inf if zs[i] is None else zs[i])
        s = data["summary"]
        return (f"max z_post_mlp {zs[best]:.2f} at layer {data['layer_results'][best]['layer']}; "
                f"total dz attn {s['total_dz_attn']:+.2f}, mlp {s['total_dz_mlp']:+.2f}")
    if result.study == "embedding":
        z = [data["z_raw_embed_last_token"], data["z_l0_output_last_token"]]
        shown = [f"{v:.2f}" if v is not None else "n/a" for v in z]
        return f"z embed (last) {shown[0]}; z layer-0 output (last) {shown[1]}"
    if result.study == "heads":
        heads = [w for w in data["writers"] if ".H" in w["name"]]
        best = max(heads, key=lambda w: w["share"])
        return (f"alignment gap {data['total']:.4f} at layer {data['layer']}; top head {best['name']} "
                f"share {best['share']:.4f} (z {best['z']:.1f})")
    if result.study == "jacobian":
        s = data["summary"]
        return f"mean over heads: cos_diag {s['cos_diag']:.3f}, cos_ste {s['cos_ste']:.3f}, r_diag {s['r_diag']:.3f}"
    if result.study == "layers":
        stats = data["family_stats"]
        low, high = data["ranking"][0], data["ranking"][-1]
        return (f"block {data['block']}: closest {low} {stats[low]['mean']:.3f}, "
                f"farthest {high} {stats[high]['mean']:.3f}")
    if result.study == "surgery":
        s = data["summary"]
        return (f"mean accuracy baseline {s['baseline_mean_accuracy']:.3f}, surgery {s['surgery_mean_accuracy']:.3f}, "
                f"random control {s['random_control_mean_accuracy']:.3f} (layers {data['surgery_layers']}, "
                f"k={data['n_lang_dims']})")
    return ""


def write_index(
    out_dir: str | os.PathLike, results: Sequence[StudyResult], files: Mapping[str, Sequence[Path]]
) -> None:
    """``index.json`` and ``index.md``: which studies ran, their files and headline numbers."""
    out = Path(out_dir)
    entries = [
        {"study": r.study, "files": [p.name for p in files[r.study]], "headline": headline(r)} for r in results
    ]
    first = results[0].provenance if results else {}
    index = {"studies": entries, "model": first.get("model"), "versions": first.get("versions")}
    lines = ["# interp_tl results", ""]
    if results:
        model = first["model"]
        lines += [f"Model `{model['name']}` (processing `{model['processing']}`), "
                  f"prompts {first['prompts']['name']} n={first['prompts']['n']} seed={first['prompts']['seed']}.", ""]
    for entry in entries:
        lines += [f"## {entry['study']}", "", entry["headline"], ""]
        lines += [f"- [{name}]({name})" for name in entry["files"]] + [""]
        if f"{entry['study']}.png" in entry["files"]:
            lines += [f"![{entry['study']}]({entry['study']}.png)", ""]
    atomic_write(out / "index.md", "\n".join(lines).encode("utf-8"))
    atomic_write(out / "index.json", json_bytes(index))
