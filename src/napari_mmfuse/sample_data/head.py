"""The multimodal head phantom (T1, T2, CT, PET, tissue labels) and its known misalignments."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..io import ImageRecord
from .common import (
    SOURCE,
    Warp,
    Waves,
    as_column,
    ellipsoid_distance,
    grid_chunks,
    homogeneous,
    rotation_matrix,
    scale_bumps,
    soft_inside,
)

HEAD_CLASSES = {
    0: "background",
    1: "scalp",
    2: "skull",
    3: "CSF",
    4: "grey matter",
    5: "white matter",
    6: "deep grey matter",
    7: "ventricles",
    8: "oedema",
    9: "lesion rim",
    10: "lesion core",
}
HEAD_MODALITIES = ("MR-T1", "MR-T2", "CT", "PET")
DEFAULT_HEAD_FOV_MM = (180.0, 216.0, 180.0)

# Intensity of each class (indexed by label) per modality: arbitrary MR units, CT in HU,
# PET in SUV. The orderings are deliberately not monotonic across modalities.
_TISSUE_VALUES = {
    "MR-T1": (0.0, 820.0, 70.0, 180.0, 470.0, 680.0, 520.0, 180.0, 380.0, 430.0, 220.0),
    "MR-T2": (0.0, 420.0, 60.0, 1000.0, 620.0, 430.0, 580.0, 1000.0, 880.0, 660.0, 920.0),
    "CT": (-1000.0, -40.0, 1000.0, 5.0, 38.0, 28.0, 36.0, 5.0, 20.0, 52.0, 44.0),
    "PET": (0.0, 0.8, 0.4, 0.5, 8.0, 3.0, 8.5, 0.5, 2.0, 12.0, 5.0),
}
_INTENSITY_UNITS = {"MR-T1": "a.u.", "MR-T2": "a.u.", "CT": "HU", "PET": "SUV"}
_NAMES = {"MR-T1": "phantom T1", "MR-T2": "phantom T2", "CT": "phantom CT", "PET": "phantom PET"}
_MR_NOISE_SIGMA = {"MR-T1": 18.0, "MR-T2": 22.0}
_CT_NOISE_HU = 8.0
_PET_COUNTS_PER_SUV = 2.0
_PET_PSF_FWHM_MM = 6.0


@dataclass(frozen=True)
class _GridSpec:
    """How a modality samples the world: spacing, extra field of view, pose, supersampling."""

    spacing: tuple[float, float, float]
    margin_mm: float = 0.0
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    angles_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # about the z, y, x axes
    flip_first_axis: bool = False
    supersample: int = 1


_GRIDS = {
    "MR-T1": _GridSpec(spacing=(1.5, 1.5, 1.5)),
    # 2D multi-slice acquisition, tilted along the AC-PC line
    "MR-T2": _GridSpec(spacing=(3.0, 1.5, 1.5), shift_mm=(1.3, -2.2, 0.8), angles_deg=(3.0, 0.0, 12.0)),
    # stored superior slice first
    "CT": _GridSpec(spacing=(2.0, 1.25, 1.25), shift_mm=(-4.6, 6.1, -1.3), flip_first_axis=True),
    "PET": _GridSpec(spacing=(4.0, 4.0, 4.0), margin_mm=20.0, shift_mm=(2.3, -1.7, 1.9), supersample=2),
}


_HEAD_CENTRE = np.array([12.0, -8.0, 3.0])  # world (z, y, x) mm: not at the scanner origin
_HEAD_RADII = (82.0, 96.0, 76.0)
_SCALP_MM = 6.0
_SKULL_MM = 7.5
_BRAIN_DEPTH_MM = 16.0  # scalp + skull + CSF
_GM_MM = 3.0
_SULCUS_DEPTH_MM = 12.0
_LESION_OFFSET = np.array([18.0, -24.0, -26.0])  # right frontal white matter
_LESION_RADIUS_MM = 12.0
_LESION_RIM_MM = 4.5
_OEDEMA_RADIUS_MM = 24.0
# (centre offset from the head centre, radii), napari order; x > 0 is the patient's left
_DEEP_NUCLEI = (
    ((-2.0, 6.0, 10.0), (10.0, 15.0, 8.0)),  # thalamus
    ((-2.0, 6.0, -10.0), (10.0, 15.0, 8.0)),
    ((3.0, -10.0, 22.0), (13.0, 14.0, 6.0)),  # lentiform nucleus
    ((3.0, -10.0, -22.0), (13.0, 14.0, 6.0)),
)
_VENTRICLES = (((14.0, 0.0, 7.0), (9.0, 28.0, 5.5)), ((14.0, 0.0, -7.0), (9.0, 28.0, 5.5)))
_VENTRICLE_BEND = 0.012  # mm^-1: the horns curve downwards
_DEEP_BOX = np.array([30.0, 40.0, 35.0])  # half-size around the head centre holding the two above


class _Head:
    """The analytic head: approximate signed distances of every tissue at world points."""

    def __init__(self, seed: int):
        rng = np.random.default_rng([seed, 0])
        self.centre = _HEAD_CENTRE
        self.shape_waves = Waves(rng, 4, (1.5, 3.0), 0.02)
        self.fold_waves = Waves(rng, 10, (13.0, 19.0), 1.0)
        self.lesion_waves = Waves(rng, 4, (1.5, 3.0), 0.08)
        self.oedema_waves = Waves(rng, 5, (2.0, 4.0), 0.22)
        self.lesion_centre = as_column(_LESION_OFFSET + rng.uniform(-2.0, 2.0, size=3))

    def layers(self, points: np.ndarray, ramp: float):
        """Yield ``(label, index, distance)`` in painting order (outermost first).

        ``points`` are float32 offsets from the head centre, shape (3, N); ``index``
        selects the points where ``distance`` was evaluated (every other point lies
        outside that tissue).
        """
        reach = np.float32(ramp / 2)
        d_head, direction = ellipsoid_distance(points, _HEAD_RADII, self.shape_waves)
        head = np.flatnonzero(d_head < reach)
        if head.size == 0:
            return
        d_head, direction, points = d_head[head], direction[:, head], points[:, head]
        yield 1, head, d_head
        yield 2, head, d_head + np.float32(_SCALP_MM)
        yield 3, head, d_head + np.float32(_SCALP_MM + _SKULL_MM)

        d_envelope = d_head + np.float32(_BRAIN_DEPTH_MM)
        brain = np.flatnonzero(d_envelope < reach)
        if brain.size == 0:
            return
        # sulci along the zero lines of a random folding field g in [-1, 1], gyral crowns
        # where |g| ~ 1; the white-matter groove is wider than the pial one so that grey
        # matter lines the sulcal walls
        ridge = np.float32(1.0) - np.abs(np.tanh(self.fold_waves(direction[:, brain])))
        d_envelope = d_envelope[brain]
        d_pial = d_envelope + np.float32(_SULCUS_DEPTH_MM) * ridge**4
        d_white = d_envelope + np.float32(_GM_MM) + np.float32(_SULCUS_DEPTH_MM) * ridge * np.sqrt(ridge)
        index = head[brain]
        yield 4, index, d_pial
        yield 5, index, d_white

        points = points[:, brain]
        deep = np.flatnonzero(np.all(np.abs(points) < _DEEP_BOX[:, None], axis=0))
        if deep.size:
            local = points[:, deep]
            d_nuclei = np.min([ellipsoid_distance(local - as_column(c), r)[0] for c, r in _DEEP_NUCLEI], axis=0)
            yield 6, index[deep], d_nuclei
            d_ventricles = []
            for centre, radii in _VENTRICLES:
                bent = local - as_column(centre)
                bent[0] += np.float32(_VENTRICLE_BEND) * bent[1] ** 2
                d_ventricles.append(ellipsoid_distance(bent, radii)[0])
            yield 7, index[deep], np.min(d_ventricles, axis=0)

        box = np.float32(_OEDEMA_RADIUS_MM * 1.8)
        near = np.flatnonzero(np.all(np.abs(points - self.lesion_centre) < box, axis=0))
        if near.size:
            local = points[:, near] - self.lesion_centre
            d_oedema = ellipsoid_distance(local, (_OEDEMA_RADIUS_MM,) * 3, self.oedema_waves)[0]
            yield 8, index[near], np.maximum(d_oedema, d_white[near])  # oedema spreads in white matter
            d_lesion = ellipsoid_distance(local, (_LESION_RADIUS_MM,) * 3, self.lesion_waves)[0]
            yield 9, index[near], d_lesion
            yield 10, index[near], d_lesion + np.float32(_LESION_RIM_MM)

    def render(self, points: np.ndarray, ramp: float, table: np.ndarray | None, labels: bool):
        """Partial-volume intensities (noise free) and hard labels at world points.

        Parameters
        ----------
        points : ndarray, shape (3, N), float64
            World points (mm, napari order) as columns, where the anatomy is evaluated.
        ramp : float
            Voxel width (mm) of the partial-volume ramp.
        table : ndarray, shape (11,), optional
            Intensity of each class; None skips intensities.
        labels : bool
            Also return the class of each point (the innermost shape containing it).
        """
        local = (points - self.centre[:, None]).astype(np.float32)
        count = local.shape[1]
        values = None if table is None else np.full(count, table[0], dtype=np.float32)
        classes = np.zeros(count, dtype=np.uint8) if labels else None
        for label, index, distance in self.layers(local, ramp):
            if values is not None:
                current = values[index]
                values[index] = current + soft_inside(distance, ramp) * (np.float32(table[label]) - current)
            if classes is not None:
                classes[index[distance < 0]] = label
        return values, classes


def _head_grid(modality: str, size_mm, centre) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a modality's grid, centred near ``centre`` (world, napari order)."""
    spec = _GRIDS[modality]
    spacing = np.asarray(spec.spacing)
    fov = np.asarray(size_mm, dtype=np.float64) + spec.margin_mm
    shape = tuple(max(1, int(round(f / s))) for f, s in zip(fov, spacing))
    signs = np.ones(3)
    if spec.flip_first_axis:
        signs[0] = -1.0
    linear = rotation_matrix(spec.angles_deg) @ np.diag(signs * spacing)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(centre) + spec.shift_mm - linear @ ((np.asarray(shape) - 1) / 2)
    return shape, affine


def _render_head(head: _Head, shape, affine, table, labels: bool, world_map=None, supersample: int = 1):
    """Render the anatomy on a grid: noise-free intensities (``table`` given) and/or labels.

    ``world_map`` maps the grid's world points to the anatomy's world (``T^-1``).
    Intensities are averaged over ``supersample ** 3`` sub-voxels; labels are taken at
    the voxel centres.
    """
    if supersample > 1 and table is not None:
        s = supersample
        fine = np.eye(4)
        fine[:3, :3] = np.eye(3) / s
        fine[:3, 3] = (1.0 / s - 1.0) / 2
        values, _ = _render_head(head, [n * s for n in shape], affine @ fine, table, False, world_map)
        values = values.reshape(shape[0], s, shape[1], s, shape[2], s).mean(axis=(1, 3, 5), dtype=np.float32)
        classes = _render_head(head, shape, affine, None, True, world_map)[1] if labels else None
        return values, classes
    ramp = float(np.mean(np.linalg.norm(affine[:3, :3], axis=0)))
    count = int(np.prod(shape))
    values = None if table is None else np.empty(count, dtype=np.float32)
    classes = np.empty(count, dtype=np.uint8) if labels else None
    for start, stop, points in grid_chunks(shape, affine):
        if world_map is not None:
            points = world_map(points)
        chunk_values, chunk_classes = head.render(points, ramp, table, labels)
        if values is not None:
            values[start:stop] = chunk_values
        if classes is not None:
            classes[start:stop] = chunk_classes
    shape = tuple(shape)
    return (
        None if values is None else values.reshape(shape),
        None if classes is None else classes.reshape(shape),
    )


def _add_noise(modality: str, clean: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Modality-appropriate noise: Rician (MR), Gaussian HU (CT), Poisson then PSF blur (PET)."""
    if modality.startswith("MR"):
        sigma = np.float32(_MR_NOISE_SIGMA[modality])
        real = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
        imaginary = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
        return np.hypot(real, imaginary)
    if modality == "CT":
        noisy = clean + np.float32(_CT_NOISE_HU) * rng.standard_normal(clean.shape, dtype=np.float32)
        return np.rint(noisy).astype(np.int16)
    counts = rng.poisson(np.clip(clean, 0, None) * _PET_COUNTS_PER_SUV).astype(np.float32)
    sigma_mm = _PET_PSF_FWHM_MM / (2 * np.sqrt(2 * np.log(2)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return ndimage.gaussian_filter(counts / np.float32(_PET_COUNTS_PER_SUV), sigma_mm / spacing, mode="constant")


def _head_metadata(modality: str, seed: int, **extra) -> dict:
    return {
        "source": SOURCE,
        "source_path": None,
        "modality": modality,
        "intensity_units": _INTENSITY_UNITS[modality],
        "tissue_values": {HEAD_CLASSES[i]: v for i, v in enumerate(_TISSUE_VALUES[modality])},
        "seed": seed,
        **extra,
    }


def _check_modality(modality: str) -> None:
    if modality not in HEAD_MODALITIES:
        raise ValueError(f"modality must be one of {HEAD_MODALITIES}, not {modality!r}")


def _head_labels_record(classes: np.ndarray, affine, seed: int, name: str, **extra) -> ImageRecord:
    return ImageRecord(
        data=classes,
        affine=affine,
        name=name,
        units="mm",
        metadata={"source": SOURCE, "source_path": None, "classes": dict(HEAD_CLASSES), "seed": seed, **extra},
        layer_type="labels",
    )


def _head_records(
    head: _Head,
    modality: str,
    shape,
    affine,
    seed: int,
    stream: int,
    *,
    labels: bool = False,
    world_map=None,
    name: str | None = None,
    labels_name: str = "phantom labels",
    **extra,
) -> list[ImageRecord]:
    """Render one modality on a grid (one pass): its image, then optionally its labels."""
    table = np.asarray(_TISSUE_VALUES[modality], dtype=np.float32)
    clean, classes = _render_head(head, shape, affine, table, labels, world_map, _GRIDS[modality].supersample)
    name = name or _NAMES[modality]
    records = [
        ImageRecord(
            data=_add_noise(modality, clean, affine, np.random.default_rng([seed, stream])),
            affine=affine,
            name=name,
            units="mm",
            metadata=_head_metadata(modality, seed, **extra),
        )
    ]
    if labels:
        extra.pop("ground_truth", None)
        records.append(_head_labels_record(classes, affine, seed, labels_name, grid_of=modality, **extra))
    return records


def head_phantom(*, size_mm=DEFAULT_HEAD_FOV_MM, seed: int = 0) -> list[ImageRecord]:
    """A multimodal head phantom: T1 and T2 MRI, CT and PET of one analytic anatomy.

    The anatomy (scalp, skull, CSF, folded cortex, white matter, deep grey nuclei,
    lateral ventricles, a tumour with a rim, a necrotic core and white-matter oedema) is
    defined in continuous world coordinates (mm, LPS, napari order) and rendered on a
    different grid per modality, each with partial volume and its own noise:

    ========  ==========================  ==========================================
    modality  grid (z, y, x spacing, mm)  pose and noise
    ========  ==========================  ==========================================
    MR-T1     1.5 x 1.5 x 1.5             axis aligned; Rician
    MR-T2     3.0 x 1.5 x 1.5             oblique (12 deg about x, 3 deg about z),
                                          shifted; Rician
    CT        2.0 x 1.25 x 1.25           superior slice first, shifted; Gaussian HU
    PET       4 x 4 x 4                   20 mm wider field, own origin; Poisson
                                          counts, then a 6 mm FWHM Gaussian PSF
    ========  ==========================  ==========================================

    Contrast: T1 WM > GM > CSF, bone dark, scalp bright; T2 CSF > GM > WM, bone dark;
    CT bone ~1000 HU, brain 28-38 HU, CSF 5 HU, air -1000 HU, lesion slightly hyperdense;
    PET GM ~8, WM ~3, CSF ~0.5 SUV, lesion rim ~12 SUV. ``metadata["tissue_values"]``
    holds the noise-free value of every class.

    Parameters
    ----------
    size_mm : sequence of 3 float
        Field of view of the T1 grid (z, y, x) in mm; the other grids follow it. The
        head (about 164 x 192 x 152 mm) is fixed: a smaller field crops it.
    seed : int
        Seeds the anatomy's random details (folding, shapes) and the noise.

    Returns
    -------
    list of ImageRecord
        T1, T2, CT and PET, in that order. Data: float32 for MR and PET, int16 (HU) for CT.

    See Also
    --------
    head_phantom_labels : the ground-truth tissue classes on any of these grids.
    """
    return render_head_phantom(size_mm, seed, labels=False)


def render_head_phantom(size_mm, seed: int, labels: bool) -> list[ImageRecord]:
    """The four modalities of :func:`head_phantom`, plus the T1-grid labels last when ``labels``.

    Parameters
    ----------
    size_mm : sequence of 3 float
        As in :func:`head_phantom`.
    seed : int
        As in :func:`head_phantom`.
    labels : bool
        Also return the tissue labels on the T1 grid (rendered with the T1 image, not again).

    Returns
    -------
    list of ImageRecord
        T1, T2, CT, PET[, labels].
    """
    head = _Head(seed)
    records, extra = [], []
    for stream, modality in enumerate(HEAD_MODALITIES, start=1):
        shape, affine = _head_grid(modality, size_mm, head.centre)
        with_labels = labels and modality == "MR-T1"
        rendered = _head_records(head, modality, shape, affine, seed, stream, labels=with_labels)
        records.append(rendered[0])
        extra.extend(rendered[1:])
    return records + extra


def head_phantom_labels(*, size_mm=DEFAULT_HEAD_FOV_MM, seed: int = 0, modality: str = "MR-T1") -> ImageRecord:
    """Ground-truth tissue classes of :func:`head_phantom`, on one modality's grid.

    A voxel gets the innermost tissue containing its centre. Class names are in
    ``metadata["classes"]`` (see :data:`HEAD_CLASSES`).

    Parameters
    ----------
    size_mm : sequence of 3 float
        As in :func:`head_phantom`.
    seed : int
        As in :func:`head_phantom` (the same seed gives the same anatomy).
    modality : {"MR-T1", "MR-T2", "CT", "PET"}
        Whose grid to render on (T1 by default).

    Returns
    -------
    ImageRecord
        uint8 label image, ``layer_type="labels"``.
    """
    _check_modality(modality)
    head = _Head(seed)
    shape, affine = _head_grid(modality, size_mm, head.centre)
    _, classes = _render_head(head, shape, affine, None, True)
    name = "phantom labels" if modality == "MR-T1" else f"phantom labels ({modality})"
    return _head_labels_record(classes, affine, seed, name, grid_of=modality)


# -------------------------------------------------------------------- misaligned pairs

_MISALIGNMENT_KINDS = ("rigid", "affine", "deformable")
_RIGID_ANGLES_DEG = (-8.0, 0.0, 10.0)  # about z, y, x
_RIGID_TRANSLATION_MM = (6.0, -8.0, 7.0)
_AFFINE_SCALE = (1.0, 0.95, 1.08)
_AFFINE_SHEAR = 0.05  # y += shear * x
_DEFORMABLE_ANGLES_DEG = (0.0, 0.0, 3.0)
_DEFORMABLE_TRANSLATION_MM = (-2.0, 3.0, 4.0)
_DEFORMABLE_BUMPS = 6
_DEFORMABLE_SIGMA_MM = 22.0
_DEFORMABLE_MAX_MM = 6.0



def _head_warp(kind: str, seed: int, centre: np.ndarray) -> Warp:
    if kind == "rigid":
        return Warp(homogeneous(rotation_matrix(_RIGID_ANGLES_DEG), centre, _RIGID_TRANSLATION_MM))
    if kind == "affine":
        shear = np.eye(3)
        shear[1, 2] = _AFFINE_SHEAR
        linear = rotation_matrix(_RIGID_ANGLES_DEG) @ shear @ np.diag(_AFFINE_SCALE)
        return Warp(homogeneous(linear, centre, _RIGID_TRANSLATION_MM))
    rng = np.random.default_rng([seed, 100])
    brain = np.asarray(_HEAD_RADII) - _BRAIN_DEPTH_MM
    centres = centre + rng.uniform(-0.45, 0.45, size=(_DEFORMABLE_BUMPS, 3)) * brain
    vectors = rng.normal(size=(_DEFORMABLE_BUMPS, 3))
    vectors *= rng.uniform(0.6, 1.0, size=(_DEFORMABLE_BUMPS, 1)) / np.linalg.norm(vectors, axis=1, keepdims=True)
    warp = Warp(
        homogeneous(rotation_matrix(_DEFORMABLE_ANGLES_DEG), centre, _DEFORMABLE_TRANSLATION_MM),
        centres,
        vectors,
        _DEFORMABLE_SIGMA_MM,
    )
    axes = [np.arange(-r, r + 1e-9, 3.0) for r in _HEAD_RADII]
    lattice = centre[:, None] + np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    return scale_bumps(warp, lattice, _DEFORMABLE_MAX_MM)


def misaligned_phantom(
    kind: str = "rigid", *, seed: int = 0, moving_modality: str = "MR-T2", labels: bool = False
) -> list[ImageRecord]:
    """A fixed/moving pair of the head phantom with a known misalignment.

    The fixed image is the T1 phantom (as in :func:`head_phantom`). The moving image
    shows the same anatomy after a known world transform ``T``: it is rendered on its own
    modality grid, centred on the moved head, by evaluating the anatomy at ``T^-1`` of
    its voxel centres (analytically, not by resampling), with its own noise.

    Convention (ITK): ``T`` maps a **fixed**-world point ``p`` to the **moving**-world
    point ``T(p)`` showing the same anatomy, i.e. ``moving(T(p)) ~ fixed(p)``.
    ``T(p) = A (p + u(p))`` with ``A`` affine and ``u`` smooth (zero unless deformable):

    * ``"rigid"``: rotations of 10 deg about x and -8 deg about z (about the head
      centre), translation (6, -8, 7) mm (z, y, x);
    * ``"affine"``: the rigid part after scaling (1.0, 0.95, 1.08) and shear 0.05 (y += 0.05 x);
    * ``"deformable"``: a small rigid part (3 deg about x, translation (-2, 3, 4) mm)
      after six Gaussian bumps (sigma 22 mm) with ``max |u|`` = 6 mm, invertible.

    The moving record's ``metadata["ground_truth"]`` holds:

    * ``"kind"``: the kind;
    * ``"fixed_to_moving"``: ``A`` as a 4 x 4 nested list, napari-order world points in
      homogeneous coordinates (for rigid and affine, ``T`` itself);
    * for ``"deformable"`` only: ``"displacement_mm"``, float32 array (Z, Y, X, 3) on the
      fixed grid with napari-order components, the **total** displacement ``T(p) - p``
      at each fixed voxel centre ``p`` (so ``T(p) = p + displacement``), and
      ``"affine"``, the 4 x 4 index -> world affine of that grid (the fixed image's).

    Parameters
    ----------
    kind : {"rigid", "affine", "deformable"}
    seed : int
        Anatomy and noise seed (as in :func:`head_phantom`); also the bumps' layout.
    moving_modality : {"MR-T2", "CT", "PET", "MR-T1"}
        Modality (and grid) of the moving image.
    labels : bool
        Also return the ground-truth label maps of the fixed and the moving image.

    Returns
    -------
    list of ImageRecord
        ``[fixed, moving]``, plus ``[fixed labels, moving labels]`` when ``labels``.
    """
    if kind not in _MISALIGNMENT_KINDS:
        raise ValueError(f"kind must be one of {_MISALIGNMENT_KINDS}, not {kind!r}")
    _check_modality(moving_modality)
    head = _Head(seed)
    warp = _head_warp(kind, seed, head.centre)
    fixed_shape, fixed_affine = _head_grid("MR-T1", DEFAULT_HEAD_FOV_MM, head.centre)
    moved_centre = warp.forward(head.centre[:, None])[:, 0]
    moving_shape, moving_affine = _head_grid(moving_modality, DEFAULT_HEAD_FOV_MM, moved_centre)

    truth = {"kind": kind, "fixed_to_moving": warp.matrix.tolist()}
    if warp.deformable:
        truth["displacement_mm"] = warp.displacement_field(fixed_shape, fixed_affine)
        truth["affine"] = fixed_affine.tolist()
    fixed = _head_records(
        head,
        "MR-T1",
        fixed_shape,
        fixed_affine,
        seed,
        1,
        labels=labels,
        name=f"fixed T1 ({kind})",
        labels_name=f"fixed labels ({kind})",
        role="fixed",
    )
    moving = _head_records(
        head,
        moving_modality,
        moving_shape,
        moving_affine,
        seed,
        10 + HEAD_MODALITIES.index(moving_modality),
        labels=labels,
        world_map=warp.inverse,
        name=f"moving {_NAMES[moving_modality].split()[-1]} ({kind})",
        labels_name=f"moving labels ({kind})",
        role="moving",
        ground_truth=truth,
    )
    return [fixed[0], moving[0], *fixed[1:], *moving[1:]]
