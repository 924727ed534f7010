"""Synthetic coronary angiogram view pairs with ground-truth correspondences (the data engine).

Zhao et al. 2025, Fig. 1: procedural coronary tree -> two clinically used C-arm views -> vessel
masks and path-length maps -> rendered angiograms -> ground-truth keypoint matches. For each tree
t of this shard: ``make_coronary_tree(seed + t)``; for each pair k: ``sample_view_pair`` centred on
the centroid of the opacified tree (see below), ``project_vessels`` of the
opacified tree in both views, ``ground_truth_matches``, two physics renderings, and
``write_sample`` (format: :mod:`xraycardiac.coronary.synth.dataset`).

Tree from a label map: given ``labelmap`` (a coronary label map file, NRRD / NIfTI / MetaImage, e.g.
a CCTA segmentation exported from Slicer or an ImageCAS case), the run makes one tree (``trees`` must
be 1): ``tree_from_labelmap(read_volume(labelmap), left_label, right_label)`` (left tree = tree 0,
right tree = tree 1; ``left_label == right_label`` when one label holds both trees, as in ImageCAS;
None skips a side), extracted once, before anything is written. The views, injection and rendering
are those of a procedural tree; the side that ``injection`` opacifies must be in the map. The map's
file name, sha256 and labels are stored in ``dataset.json`` (``generator.tree_source``), so a folder
made from one label map refuses to be continued with another.

Injection: an angiogram shows one selectively injected coronary tree, so by default
("alternate") even trees give left-coronary pairs (LCA views, LCA opacified) and odd trees
right-coronary pairs; "left" / "right" fix the side; "both" opacifies both trees (LCA views for
even trees, RCA views for odd ones).

Randomness: pair (t, k) draws everything from ``SeedSequence([seed, t, k])`` (split into views,
background, view-1 and view-2 rendering), never from a shared stream, so a pair's bytes do not
depend on which other pairs ran before it: that is what makes resuming and sharding exact. Both
views of a pair get the same background generator state, hence the same patient anatomy (spine,
ribs, lungs, heart) seen from the two angles, while each view draws its own exposure, contrast
concentration and noise (two acquisitions, two injections).

Isocentre: the operator centres the C-arm on the injected artery, so the nominal isocentre (before
the view sampler's jitter) is the centroid of the opacified tree's centreline. Measured on 12
phantom trees x 4 pairs at the default 512 x 512 detector: 98 % of the keypoints fall in the
field on average (worst view pair 90 %), against 96 % (worst 74 %) with the heart ellipsoid's
centre, which the opacified tree covers only on one side.

Resumable and sharded: :func:`synthesize` writes into one dataset folder, one atomic sample at a
time, each followed by its record ``tree_<t>/pair_<t>_<k>.done.json`` (every file of the sample
with its size and sha256, :mod:`xraycardiac.outputs`; ``tree_<t>/tree.done.json`` for ``tree.json``).
A rerun keeps a sample only if its record is there and its files still match it; a sample with a
file missing, emptied or changed, or without a record, is deleted and made again (the same bytes:
see Randomness). Shard "i/N" takes the trees t with t % N == i. The
CLI (``xraycardiac coronary synth --out DIR``) calls it directly on DIR, so a killed or preempted
run continues where it stopped when rerun, and N shards may share DIR. The registered job (GUI)
calls the same function: into its fresh work folder (the dataset then appears at ``output_dir``
whole, when the job succeeds), or, given ``inputs.dataset`` (an existing folder), into that
folder in place with the same resume rules, its ``output_dir`` receiving only the job report.
A pair whose tree projects outside the field of view of either view is skipped and reported
(``OutsideFieldOfViewError``), never failing the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac import __version__
from xraycardiac.coronary.synth import dataset as ds
from xraycardiac.coronary.synth.config import SynthConfig
from xraycardiac.outputs import check_output, discard, parse_shard, verify_record, write_record

__all__ = ["labelmap_tree", "prepare_dataset_dir", "record_shard", "synthesize"]

ProgressFn = Callable[..., None]


# --------------------------------------------------------------------------------------------------
# Runs into one dataset folder: dataset.json and the shard records
# --------------------------------------------------------------------------------------------------

# generator keys that may grow between runs into one folder (tree t / pair k never depend on them)
_EXTENSIBLE = ("trees", "pairs_per_tree")


def prepare_dataset_dir(
    root: str | Path, generator: dict[str, Any], renderer: dict[str, Any]
) -> dict[str, Any]:
    """Create ``root`` with its ``dataset.json``, or check that an existing dataset there is compatible.

    A folder may receive several runs (shards, resumed runs, runs with more trees or pairs) as
    long as everything that determines a sample's content is the same: ``generator`` minus
    ``trees`` and ``pairs_per_tree`` (tree t and pair k never depend on them) and ``renderer``
    (the overwrite rule of :func:`xraycardiac.outputs.check_output`).

    Args:
        root: dataset folder; created (with parents) if absent.
        generator: JSON-ready generator parameters (see ``SynthConfig.generator_params``).
        renderer: JSON-ready ``{"name": ..., "config": {...}}``.

    Returns:
        The ``dataset.json`` content now on disk.

    Raises:
        FileExistsError: ``root`` is a file, or a non-empty folder without ``dataset.json``.
        PermissionError: ``root`` (or the folder it would be made in) is read-only.
        ValueError: ``root`` holds a dataset made with other parameters (names the first one and
            both values).
    """

    root = Path(root)
    generator, renderer = ds.normalised(generator), ds.normalised(renderer)
    settings = {"format": ds.DATASET_FORMAT, "format_version": ds.FORMAT_VERSION, "generator": generator,
                "renderer": renderer}  # fmt: skip
    info = check_output(
        root, settings_file=ds.INFO_NAME, settings=settings, ignore=[f"generator.{k}" for k in _EXTENSIBLE],
        what="dataset folder", how=None, kind="a coronary pair dataset", noun="parameters",
    )  # fmt: skip
    if info is not None:
        return info
    root.mkdir(parents=True, exist_ok=True)
    info = {
        "format": ds.DATASET_FORMAT,
        "format_version": ds.FORMAT_VERSION,
        "xraycardiac_version": __version__,
        "layout": "tree_<t:05d>/pair_<t:05d>_<k:02d>/ (see xraycardiac.coronary.dataset)",
        "generator": generator,
        "renderer": renderer,
        "counts": {"trees": 0, "samples": 0},
        "shards": {},
    }
    # two shards starting together write identical content, so a lost race is harmless
    ds.write_json_atomic(root / ds.INFO_NAME, info)
    return info


def record_shard(root: str | Path, shard: tuple[int, int], record: dict[str, Any]) -> dict[str, Any]:
    """Store one shard run's record and refresh ``dataset.json``'s counts and shard table.

    Args:
        root: the dataset folder (``prepare_dataset_dir`` made it).
        shard: (i, N) of the run.
        record: JSON-ready summary of the run (trees, written, skipped, resumed, timing ...).

    Returns:
        The updated ``dataset.json`` content.
    """

    root = Path(root)
    i, n = shard
    (root / "shards").mkdir(exist_ok=True)
    ds.write_json_atomic(root / "shards" / f"shard_{i}-of-{n}.json", record)
    info = ds.dataset_info(root)
    shards = {}
    for path in sorted((root / "shards").glob("shard_*-of-*.json")):
        shards[path.stem.removeprefix("shard_").replace("-of-", "/")] = ds.read_json(path, "shard record")
    samples = ds.list_samples(root)
    generator = dict(info.get("generator", {}))
    for key in _EXTENSIBLE:
        seen = [generator.get(key)] + [s.get("config", {}).get(key) for s in shards.values()]
        seen = [v for v in seen if isinstance(v, int)]
        if seen:
            generator[key] = max(seen)
    info.update(
        generator=generator,
        counts={"trees": len({p.parent.name for p in samples}), "samples": len(samples)},
        shards=shards,
    )
    ds.write_json_atomic(root / ds.INFO_NAME, info)
    return info


def _render_diffusion(
    config: SynthConfig,
    projections: list[Any],
    seed_seq: np.random.SeedSequence,
    report: Callable[[str, float], None],
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Both views of a pair in one diffusion batch; returns (images, per-view draws)."""
    from xraycardiac.coronary.synth.render_diffusion import load_renderer

    settings = config.renderer_settings()
    renderer = load_renderer(settings.model, config.device)
    seed = int(seed_seq.generate_state(1)[0])
    masks = np.stack([p.mask for p in projections])
    thick = np.stack([p.thickness_mm for p in projections])

    def step(i: int, n: int) -> None:
        report(f"diffusion step {i}/{n}", 0.85 + 0.12 * i / n)

    images = renderer.render(
        masks, thick, seed=seed, steps=settings.steps, sampler=settings.sampler, progress=step
    )
    draws = [
        {"seed": seed, "batch_index": v, "steps": settings.steps, "sampler": settings.sampler} for v in (0, 1)
    ]
    return [im for im in images], draws


def labelmap_tree(config: SynthConfig) -> Any:
    """Tree 0 of a label-map run: ``tree_from_labelmap`` of ``config.labelmap``, checked against the injection.

    Args:
        config: a config with ``labelmap`` set.

    Returns:
        The ``CoronaryTree`` (RAS mm; tree 0 = left, 1 = right) with every side ``injection`` opacifies.

    Raises:
        ValueError: naming ``labelmap`` and the file: unreadable, not 3D, no voxel of the labels,
            no tubular structure, or no tree on the side that ``injection`` opacifies.
        FileNotFoundError: the file does not exist.
    """
    from xraycardiac.coronary.from_labelmap import tree_from_labelmap
    from xraycardiac.io import read_volume

    if config.labelmap is None:
        raise ValueError("labelmap: this run has no label map (its trees are procedural)")
    path = config.labelmap
    try:
        volume = read_volume(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"labelmap: {path} does not exist") from None
    except ValueError as exc:
        raise ValueError(f"labelmap: {exc}") from None
    if min(volume.shape_ijk) < 2:
        raise ValueError(
            f"labelmap: {path}: expected a 3D label map, got an image of size (I, J, K) = {volume.shape_ijk}"
        )
    try:
        tree = tree_from_labelmap(volume, config.left_label, config.right_label)
    except ValueError as exc:
        reason = str(exc).removeprefix("tree_from_labelmap: ")
        raise ValueError(f"labelmap: {path}: {reason}") from None
    found = set(np.unique(tree.tree).tolist())
    for t in config.side_of(0)[1]:
        if t in found:
            continue
        side = ("left", "right")[t]
        label = config.left_label if t == 0 else config.right_label
        if label is None:
            reason = f"{side}_label is None"
        elif config.left_label == config.right_label:
            reason = (
                f"label {label} holds one tree only, taken as the left one (a right tree is a second "
                "component of at least 10 % of the first)"
            )
        else:
            reason = f"{side}_label {label} has no voxel in it"
        raise ValueError(
            f"labelmap: {path} has no {side} coronary tree ({reason}), but injection {config.injection!r} "
            f"opacifies it; choose the injection of the tree the map holds, or the {side}_label it uses"
        )
    return tree


def _isocenter(tree: Any, trees: tuple[int, ...]) -> np.ndarray:
    """(3,) RAS mm: the centroid of the opacified tree's centreline points (the C-arm's nominal isocentre)."""
    return np.asarray(tree.points, dtype=np.float64)[np.isin(tree.tree, trees)].mean(axis=0)


def _make_pair(
    config: SynthConfig, tree: Any, tree_index: int, pair_index: int, report: Callable[[str, float], None]
) -> dict[str, Any]:
    """Views, projections, matches and renderings of pair (t, k); raises OutsideFieldOfViewError."""
    from xraycardiac.coronary.synth.correspondences import ground_truth_matches, sample_keypoints
    from xraycardiac.coronary.synth.projection import project_vessels
    from xraycardiac.coronary.synth.render_physics import background_line_integral, render_angiogram_detailed
    from xraycardiac.coronary.synth.views import sample_view_pair

    side, opacified = config.side_of(tree_index)
    ss = np.random.SeedSequence([config.seed, tree_index, pair_index])
    s_views, s_background, s_render1, s_render2 = ss.spawn(4)
    report("sampling views", 0.0)
    g1, g2 = sample_view_pair(
        side, np.random.default_rng(s_views), config.view_config(), _isocenter(tree, opacified)
    )
    voxel = config.resolved_voxel_mm()
    projections = []
    for v, g in enumerate((g1, g2)):
        report(f"projecting view {v + 1}", 0.1 + 0.35 * v)
        projections.append(project_vessels(tree, g, voxel_mm=voxel, trees=opacified, device=config.device))
    report("ground-truth matches", 0.8)
    keypoints = sample_keypoints(tree, config.keypoint_spacing_mm, trees=opacified)
    gt = ground_truth_matches(keypoints, g1, g2, projections[0], projections[1], overlap_px=config.overlap_px)
    if config.renderer == "diffusion":
        images, draws = _render_diffusion(config, projections, s_render1, report)
        return _pair_record(
            config, side, opacified, g1, g2, projections, gt, images, draws, tree_index, pair_index
        )
    physics = config.physics_config()
    images, draws = [], []
    for v, (g, p, s) in enumerate(zip((g1, g2), projections, (s_render1, s_render2), strict=True)):
        report(f"rendering view {v + 1}", 0.85 + 0.07 * v)
        # the same background state for both views: one patient, seen from two angles
        background = background_line_integral(g, physics, np.random.default_rng(s_background))
        r = render_angiogram_detailed(
            p.thickness_mm, g, physics, np.random.default_rng(s), background_mu=background
        )
        images.append(r.image)
        draws.append({**r.draw.to_dict(), "i0": r.i0, "window": list(r.window)})
    return _pair_record(
        config, side, opacified, g1, g2, projections, gt, images, draws, tree_index, pair_index
    )


def _pair_record(
    config: SynthConfig, side: str, opacified: tuple[int, ...], g1: Any, g2: Any, projections: list[Any],
    gt: Any, images: list[np.ndarray], draws: list[dict[str, Any]], tree_index: int, pair_index: int,
) -> dict[str, Any]:  # fmt: skip
    """The ``write_sample`` keyword arguments of one rendered pair."""
    from xraycardiac.coronary.synth.views import angle_between_views

    meta = {
        **({"tree_source": Path(config.labelmap).name} if config.labelmap is not None else {}),
        "injection": config.injection,
        "views_of": side,
        "opacified_trees": [("left", "right")[t] for t in opacified],
        "tree_seed": None if config.labelmap is not None else config.seed + tree_index,
        "pair_seed": [config.seed, tree_index, pair_index],
        "standard_views": [g1.name, g2.name],
        "separation_deg": angle_between_views(g1, g2),
        "voxel_mm": config.resolved_voxel_mm(),
        "renderer": config.renderer,
        "render_draws": draws,
    }
    return {
        "images": images,
        "masks": [p.mask for p in projections],
        "thickness_mm": [p.thickness_mm for p in projections],
        "geometries": [g1, g2],
        "gt": gt,
        "meta": meta,
    }


def synthesize(
    config: SynthConfig,
    out: str | Path,
    shard: str | tuple[int, int] = (0, 1),
    resume: bool = True,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Make this shard's view pairs in the dataset folder ``out``, skipping the samples already there.

    Args:
        config: what to make (must match the parameters of a dataset already in ``out``, except
            ``trees`` and ``pairs_per_tree``, which may grow).
        out: dataset folder; created if absent.
        shard: "i/N" or (i, N): this run makes the trees t with t % N == i.
        resume: True: keep the samples of this shard that match their records and make the rest
            (a rerun continues an interrupted run; a sample with a file missing, cut short or
            changed is deleted and made again). False: refuse to start if any of them exists.
        progress: ``progress(stage, fraction, **extra)`` (e.g. a :class:`Progress`), one or more
            events per pair; fraction of this shard's pairs done.

    Returns:
        Summary: ``written``, ``skipped`` (pairs outside the field of view, with reasons in
        ``skipped_pairs``), ``resumed`` (found complete on disk), ``redone`` (samples found
        incomplete and made again, with the reason), ``pairs`` (this shard's total),
        ``trees`` (this shard's tree indices), ``seconds``, ``seconds_per_written_pair``,
        ``dataset_dir``, ``shard``, and the dataset ``counts`` after the run.

    With ``config.labelmap`` the tree is extracted from the label map (``labelmap_tree``) before
    anything is written, so a bad label map leaves ``out`` as it was.

    Raises:
        ValueError: a bad shard, or ``out`` holds a dataset made with other parameters, or a bad
            label map (see ``labelmap_tree``).
        FileExistsError: ``out`` is a file or a foreign non-empty folder, or (``resume`` False)
            samples of this shard exist already.
    """
    from xraycardiac.coronary.synth.projection import OutsideFieldOfViewError
    from xraycardiac.phantoms.coronary import make_coronary_tree

    i_shard, n_shard = parse_shard(shard)
    out = Path(out)
    report_fn = progress if progress is not None else (lambda stage, fraction, **extra: None)
    t0 = time.monotonic()
    tree_ids = [t for t in range(config.trees) if t % n_shard == i_shard]
    given = None
    if config.labelmap is not None and tree_ids:  # first, so that a bad label map writes nothing
        report_fn("tree 0: extracting the centreline tree from the label map", 0.0, tree=0)
        given = labelmap_tree(config)
    prepare_dataset_dir(out, config.generator_params(), config.renderer_params())
    todo = [(t, k) for t in tree_ids for k in range(config.pairs_per_tree)]
    existing = {(t, k) for t, k in todo if ds.sample_path(out, t, k).is_dir()}
    if existing and not resume:
        t, k = min(existing)
        raise FileExistsError(
            f"{out} already holds {len(existing)} sample(s) of shard {i_shard}/{n_shard} (e.g. "
            f"{ds.sample_name(t, k)}); resume to keep them and make the rest, or choose another folder"
        )
    why_not = {(t, k): verify_record(_record_path(out, t, k), out) for t, k in sorted(existing)}
    complete = {tk for tk, why in why_not.items() if why is None}
    total = max(len(todo), 1)
    written, resumed, skipped_pairs, redone = 0, 0, [], []
    done = 0
    for t in tree_ids:
        missing = [k for k in range(config.pairs_per_tree) if (t, k) not in complete]
        resumed += config.pairs_per_tree - len(missing)
        done += config.pairs_per_tree - len(missing)
        tree_json = f"{ds.tree_dir(out, t).name}/tree.json"
        tree_record = ds.tree_dir(out, t) / "tree.done.json"
        tree_ok = verify_record(tree_record, out) is None
        if not missing and tree_ok:
            report_fn(f"tree {t}: all {config.pairs_per_tree} pairs already there", done / total, tree=t)
            continue
        if given is not None:  # a label-map run has one tree, index 0
            tree = given
        else:
            report_fn(f"tree {t}: generating the tree", done / total, tree=t)
            tree = make_coronary_tree(config.phantom_for(t))
        if not tree_ok:
            discard(tree_record, out, [tree_json])
            ds.write_tree(out, t, tree)
            write_record(tree_record, out, [tree_json])
        for k in missing:
            name = ds.sample_name(t, k)
            sample = f"{ds.tree_dir(out, t).name}/{name}"
            if (t, k) in existing:  # there, but not as its record says: made again, byte for byte
                redone.append({"sample": name, "reason": why_not[(t, k)]})
                discard(_record_path(out, t, k), out, [sample], folders=True)

            def report(
                stage: str, f: float, _name: str = name, _t: int = t, _k: int = k, _d: int = done
            ) -> None:
                report_fn(f"{_name}: {stage}", (_d + f) / total, tree=_t, pair=_k)

            ds.remove_stale_temp(out, t, k)
            try:
                pair = _make_pair(config, tree, t, k, report)
            except OutsideFieldOfViewError as exc:
                skipped_pairs.append({"sample": name, "reason": str(exc)})
                done += 1
                report_fn(f"{name}: skipped (outside the field of view)", done / total, tree=t, pair=k)
                continue
            report("writing", 0.97)
            try:
                ds.write_sample(out, t, k, **pair)
            except FileExistsError:  # another run of the same shard wrote it meanwhile (and records it)
                resumed += 1
            else:
                write_record(_record_path(out, t, k), out, [sample])  # last: the sample is complete
                written += 1
            done += 1
            report_fn(f"{name}: written", done / total, tree=t, pair=k)
    seconds = time.monotonic() - t0
    summary: dict[str, Any] = {
        "dataset_dir": str(out),
        "shard": f"{i_shard}/{n_shard}",
        "trees": tree_ids,
        "pairs": len(todo),
        "written": written,
        "skipped": len(skipped_pairs),
        "resumed": resumed,
        "skipped_pairs": skipped_pairs,
        "redone": redone,
        "seconds": round(seconds, 3),
        "seconds_per_written_pair": round(seconds / written, 3) if written else None,
        "config": {"trees": config.trees, "pairs_per_tree": config.pairs_per_tree, "device": config.device},
    }
    info = record_shard(out, (i_shard, n_shard), summary)
    summary["counts"] = info["counts"]
    report_fn("done", 1.0)
    return summary


def _record_path(root: Path, tree_index: int, pair_index: int) -> Path:
    """``tree_<t>/pair_<t>_<k>.done.json``: the record written after sample (t, k)."""

    path = ds.sample_path(root, tree_index, pair_index)
    return path.with_name(f"{path.name}.done.json")
