"""Synthetic multimodal sample data with exact ground truth: no downloads, fixed seeds.

Two families of data, both defined analytically in continuous world coordinates and
rendered onto voxel grids (see :mod:`napari_mmfuse.core.space` for the conventions:
LPS patient frame, world points in napari axis order, affines map a numpy index to the
world):

* a **head phantom** (millimetres): scalp, skull, CSF, a folded grey-matter cortex,
  white matter, deep grey nuclei, lateral ventricles and a rimmed tumour with oedema,
  imaged as T1- and T2-weighted MRI, CT (Hounsfield units) and PET (SUV), each on its own
  grid (different spacing, origin, orientation) with modality-appropriate noise;
* a **slide pair** (micrometres): one synthetic tissue section (glands, nuclei,
  stroma, immune cells) rendered as a brightfield H&E RGB image and as a three-channel
  immunofluorescence image seen through a known smooth deformation.

Misaligned pairs carry their exact ground truth in ``metadata["ground_truth"]``.
Transform convention (ITK's, for registration): ``T`` maps a point of the **fixed**
image's world to the corresponding point of the **moving** image's world, so that
``moving(T(p))`` shows the same anatomy as ``fixed(p)``. The moving images are rendered
by evaluating the anatomy at ``T^-1`` of their own voxel centres, never by resampling.

Partial volume comes from an analytic box-filter ramp across each tissue boundary:
every shape is an approximate signed distance ``d`` (negative inside), and a voxel of
width ``h`` holds the fraction ``clip(1/2 - d/h, 0, 1)`` of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .core.space import voxel_to_world, world_to_voxel
from .io._common import ImageRecord

SOURCE = "napari_mmfuse.sample_data"

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

_CHUNK_POINTS = 1 << 16


# ----------------------------------------------------------------------------- geometry


def _rotation(angles_deg) -> np.ndarray:
    """Rotation (napari order) by angles about the world z, y and x axes, applied x first."""
    matrix = np.eye(3)
    for axis in (2, 1, 0):
        angle = np.deg2rad(angles_deg[axis])
        i, j = [a for a in range(3) if a != axis]
        step = np.eye(3)
        step[i, i] = step[j, j] = np.cos(angle)
        step[i, j], step[j, i] = -np.sin(angle), np.sin(angle)
        matrix = step @ matrix
    return matrix


def _homogeneous(linear: np.ndarray, centre: np.ndarray, translation) -> np.ndarray:
    """Affine ``p -> linear (p - centre) + centre + translation`` as a homogeneous matrix."""
    n = linear.shape[0]
    matrix = np.eye(n + 1)
    matrix[:n, :n] = linear
    matrix[:n, n] = centre + np.asarray(translation, dtype=np.float64) - linear @ centre
    return matrix


def _soft(distance: np.ndarray, ramp: float) -> np.ndarray:
    """Fraction of a voxel of width ``ramp`` inside a shape, from the signed distance."""
    return np.clip(0.5 - distance / np.float32(ramp), 0.0, 1.0)


def _column(vector) -> np.ndarray:
    """A float32 column (n, 1), to broadcast against points stored as (n, N)."""
    return np.asarray(vector, dtype=np.float32).reshape(-1, 1)


def _sum_squares(array: np.ndarray) -> np.ndarray:
    """Sum of squares over the first axis (points are stored as (n, N) columns)."""
    return np.einsum("ij,ij->j", array, array)


def _ellipsoid(points: np.ndarray, radii, waves=None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance (first order) to an ellipsoid centred at the origin.

    Parameters
    ----------
    points : ndarray, shape (n, N), float32
    radii : array-like, shape (n,) or (n, N)
        Semi-axes, shared or one set per point.
    waves : _Waves, optional
        Relative modulation of the radius as a function of direction.

    Returns
    -------
    distance : ndarray, shape (N,)
    direction : ndarray, shape (n, N)
        Unit direction in the ellipsoid's normalised coordinates.
    """
    radii = np.asarray(radii, dtype=np.float32)
    radii = radii[:, None] if radii.ndim == 1 else radii
    eps = np.float32(1e-6)
    u = points / radii
    rho = np.sqrt(_sum_squares(u))
    grad = np.sqrt(_sum_squares(u / radii))
    direction = u / (rho + eps)
    level = 1.0 if waves is None else 1.0 + waves(direction)
    distance = (rho - level) * (rho + eps) / (grad + eps / radii.min(axis=0))
    return distance, direction


class _Waves:
    """Smooth random function on the unit sphere: a sum of plane waves ``sin(w v.n + phi)``."""

    def __init__(self, rng: np.random.Generator, count: int, frequency: tuple[float, float], amplitude: float):
        directions = rng.normal(size=(count, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        frequencies = rng.uniform(*frequency, size=count)
        self.wavevectors = (directions * frequencies[:, None]).astype(np.float32)
        self.phases = rng.uniform(0, 2 * np.pi, size=(count, 1)).astype(np.float32)
        # each sine has standard deviation 1/sqrt(2): the sum has standard deviation ``amplitude``
        self.weights = np.full(count, amplitude / np.sqrt(count / 2), dtype=np.float32)

    def __call__(self, direction: np.ndarray) -> np.ndarray:
        """Evaluate at unit directions, shape (3, N)."""
        argument = self.phases + self.wavevectors[:, 0:1] * direction[0]
        for axis in (1, 2):
            argument += self.wavevectors[:, axis : axis + 1] * direction[axis]
        return np.einsum("j,ji->i", self.weights, np.sin(argument, out=argument))


class _Warp:
    """A known world transform ``T(x) = A (x + u(x))``.

    ``A`` is affine (homogeneous matrix) and ``u`` a smooth displacement, a sum of
    Gaussian bumps (absent for a purely affine transform). ``u`` is kept small and smooth
    (``|grad u| < 1``), so ``T`` is invertible and :meth:`inverse` converges. Points are
    stored as columns, shape (n, N).
    """

    def __init__(self, matrix: np.ndarray, centres=None, vectors=None, sigma: float = 1.0):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        n = self.matrix.shape[0] - 1
        self.centres = np.zeros((0, n)) if centres is None else np.asarray(centres, dtype=np.float64)
        self.vectors = np.zeros((0, n)) if vectors is None else np.asarray(vectors, dtype=np.float64)
        self.sigma = float(sigma)

    @property
    def deformable(self) -> bool:
        return len(self.centres) > 0

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """The non-affine part ``u`` at world points (n, N)."""
        result = np.zeros(points.shape)
        for centre, vector in zip(self.centres, self.vectors):
            radius2 = np.zeros(points.shape[1])
            for axis, c in enumerate(centre):
                offset = points[axis] - c
                radius2 += offset * offset
            weight = np.exp(radius2 * (-0.5 / self.sigma**2))
            for axis, v in enumerate(vector):
                result[axis] += v * weight
        return result

    def forward(self, points: np.ndarray) -> np.ndarray:
        """``T(p)``: fixed-world points to moving-world points, (n, N)."""
        points = np.asarray(points, dtype=np.float64)
        return _apply(self.matrix, points + self.displacement(points))

    def inverse(self, points: np.ndarray, tolerance: float = 1e-4, max_iterations: int = 50) -> np.ndarray:
        """``T^-1(q)``: moving-world points to fixed-world points, (n, N).

        Solves ``p = A^-1 q - u(p)`` by fixed-point iteration (a contraction since
        ``|grad u| < 1``) until no point moves by more than ``tolerance``.
        """
        target = _apply(np.linalg.inv(self.matrix), np.asarray(points, dtype=np.float64))
        result = target
        for _ in range(max_iterations if self.deformable else 0):
            previous, result = result, target - self.displacement(result)
            if np.abs(result - previous).max(initial=0.0) < tolerance:
                break
        return result

    def displacement_field(self, shape, affine: np.ndarray) -> np.ndarray:
        """Total displacement ``T(p) - p`` at every voxel centre of a grid, float32 (*shape, n)."""
        n = len(shape)
        out = np.empty(tuple(shape) + (n,), dtype=np.float32)
        for start, stop, points in _grid_chunks(shape, affine):
            out.reshape(-1, n)[start:stop] = (self.forward(points) - points).T
        return out


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a homogeneous affine to points stored as columns (n, N)."""
    n = matrix.shape[0] - 1
    result = np.empty(points.shape)
    for row in range(n):
        result[row] = matrix[row, n]
        for column in range(n):
            result[row] += matrix[row, column] * points[column]
    return result


def _grid_chunks(shape, affine: np.ndarray):
    """Yield ``(start, stop, world points (n, N))`` over a grid's voxel centres in C order."""
    shape = tuple(int(s) for s in shape)
    n = len(shape)
    # the world position of a voxel is the origin plus one contribution per index axis
    lines = [
        (voxel_to_world(affine, np.outer(np.arange(s), np.eye(n)[axis])) - affine[:n, n]).T
        for axis, s in enumerate(shape)
    ]
    rest = affine[:n, n, None]
    for line in lines[1:]:
        rest = (rest[:, :, None] + line[:, None, :]).reshape(n, -1)
    plane = rest.shape[1]
    step = max(1, _CHUNK_POINTS // plane)
    for first in range(0, shape[0], step):
        last = min(first + step, shape[0])
        yield first * plane, last * plane, (lines[0][:, first:last, None] + rest[:, None, :]).reshape(n, -1)


# --------------------------------------------------------------------------- head model

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
        self.shape_waves = _Waves(rng, 4, (1.5, 3.0), 0.02)
        self.fold_waves = _Waves(rng, 10, (13.0, 19.0), 1.0)
        self.lesion_waves = _Waves(rng, 4, (1.5, 3.0), 0.08)
        self.oedema_waves = _Waves(rng, 5, (2.0, 4.0), 0.22)
        self.lesion_centre = _column(_LESION_OFFSET + rng.uniform(-2.0, 2.0, size=3))

    def layers(self, points: np.ndarray, ramp: float):
        """Yield ``(label, index, distance)`` in painting order (outermost first).

        ``points`` are float32 offsets from the head centre, shape (3, N); ``index``
        selects the points where ``distance`` was evaluated (every other point lies
        outside that tissue).
        """
        reach = np.float32(ramp / 2)
        d_head, direction = _ellipsoid(points, _HEAD_RADII, self.shape_waves)
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
            d_nuclei = np.min([_ellipsoid(local - _column(c), r)[0] for c, r in _DEEP_NUCLEI], axis=0)
            yield 6, index[deep], d_nuclei
            d_ventricles = []
            for centre, radii in _VENTRICLES:
                bent = local - _column(centre)
                bent[0] += np.float32(_VENTRICLE_BEND) * bent[1] ** 2
                d_ventricles.append(_ellipsoid(bent, radii)[0])
            yield 7, index[deep], np.min(d_ventricles, axis=0)

        box = np.float32(_OEDEMA_RADIUS_MM * 1.8)
        near = np.flatnonzero(np.all(np.abs(points - self.lesion_centre) < box, axis=0))
        if near.size:
            local = points[:, near] - self.lesion_centre
            d_oedema = _ellipsoid(local, (_OEDEMA_RADIUS_MM,) * 3, self.oedema_waves)[0]
            yield 8, index[near], np.maximum(d_oedema, d_white[near])  # oedema spreads in white matter
            d_lesion = _ellipsoid(local, (_LESION_RADIUS_MM,) * 3, self.lesion_waves)[0]
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
                values[index] = current + _soft(distance, ramp) * (np.float32(table[label]) - current)
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
    linear = _rotation(spec.angles_deg) @ np.diag(signs * spacing)
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
    for start, stop, points in _grid_chunks(shape, affine):
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
    return _head_phantom(size_mm, seed, labels=False)


def _head_phantom(size_mm, seed: int, labels: bool) -> list[ImageRecord]:
    """The four modalities, plus the T1-grid labels last when ``labels``."""
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


def _scale_bumps(warp: _Warp, lattice: np.ndarray, maximum: float) -> _Warp:
    """The same warp with its bumps scaled so that ``max |u|`` over ``lattice`` is ``maximum``."""
    peak = np.linalg.norm(warp.displacement(lattice), axis=0).max()
    return _Warp(warp.matrix, warp.centres, warp.vectors * (maximum / peak), warp.sigma)


def _head_warp(kind: str, seed: int, centre: np.ndarray) -> _Warp:
    if kind == "rigid":
        return _Warp(_homogeneous(_rotation(_RIGID_ANGLES_DEG), centre, _RIGID_TRANSLATION_MM))
    if kind == "affine":
        shear = np.eye(3)
        shear[1, 2] = _AFFINE_SHEAR
        linear = _rotation(_RIGID_ANGLES_DEG) @ shear @ np.diag(_AFFINE_SCALE)
        return _Warp(_homogeneous(linear, centre, _RIGID_TRANSLATION_MM))
    rng = np.random.default_rng([seed, 100])
    brain = np.asarray(_HEAD_RADII) - _BRAIN_DEPTH_MM
    centres = centre + rng.uniform(-0.45, 0.45, size=(_DEFORMABLE_BUMPS, 3)) * brain
    vectors = rng.normal(size=(_DEFORMABLE_BUMPS, 3))
    vectors *= rng.uniform(0.6, 1.0, size=(_DEFORMABLE_BUMPS, 1)) / np.linalg.norm(vectors, axis=1, keepdims=True)
    warp = _Warp(
        _homogeneous(_rotation(_DEFORMABLE_ANGLES_DEG), centre, _DEFORMABLE_TRANSLATION_MM),
        centres,
        vectors,
        _DEFORMABLE_SIGMA_MM,
    )
    axes = [np.arange(-r, r + 1e-9, 3.0) for r in _HEAD_RADII]
    lattice = centre[:, None] + np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    return _scale_bumps(warp, lattice, _DEFORMABLE_MAX_MM)


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


# -------------------------------------------------------------------------- slide pair

SLIDE_CHANNELS = ("DAPI", "CK", "CD45")
_HE_PIXEL_UM = 0.5
_IF_PIXEL_UM = 0.65
_IF_ORIGIN_UM = (-3.0, 4.0)
# Ruifrok & Johnston optical-density vectors (R, G, B), as in scikit-image's rgb2hed
_HAEMATOXYLIN_OD = np.array([0.650, 0.704, 0.286]) / np.linalg.norm([0.650, 0.704, 0.286])
_EOSIN_OD = np.array([0.072, 0.990, 0.105]) / np.linalg.norm([0.072, 0.990, 0.105])
_SLIDE_MARGIN_UM = 60.0
_SLIDE_ROTATION_DEG = 4.0
_SLIDE_TRANSLATION_UM = (9.0, -13.0)
_SLIDE_BUMPS = 5
_SLIDE_WARP_MAX_UM = 6.0
_SLIDE_LANDMARKS = 30
_LANDMARK_MARGIN_UM = 15.0
_IMMUNE_CELL_RIM_UM = 1.8
_IF_READ_NOISE = 8.0
_EPITHELIAL, _STROMAL, _IMMUNE = 0, 1, 2
# minimum distance from a nucleus of each kind to any earlier one (epithelial: none)
_MIN_SPACING_UM = {_STROMAL: 9.0, _IMMUNE: 7.5}


@dataclass
class _Nuclei:
    """Nuclei as arrays.

    Centres (M, 2) in world um, semi-axes (M, 2) (long, short), unit long-axis
    directions (M, 2), kinds (M,), haematoxylin optical density and DAPI brightness (M,).
    """

    centres: np.ndarray
    axes: np.ndarray
    directions: np.ndarray
    kinds: np.ndarray
    haematoxylin: np.ndarray
    dapi: np.ndarray

    def subset(self, keep: np.ndarray) -> _Nuclei:
        return _Nuclei(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))

    @staticmethod
    def concatenate(parts: list[_Nuclei]) -> _Nuclei:
        return _Nuclei(*(np.concatenate([getattr(p, f) for p in parts]) for f in _Nuclei.__dataclass_fields__))


def _unit(angles: np.ndarray) -> np.ndarray:
    return np.stack([np.sin(angles), np.cos(angles)], axis=-1)  # (y, x) components


@dataclass
class _Gland:
    """A gland: an epithelial ring around a lumen, a lobed ellipse in world um (y, x)."""

    centre: np.ndarray  # (2,) world um
    radii: np.ndarray  # (2,) along the gland's own axes
    angle: float
    lumen: float  # lumen radius relative to the outer one
    harmonics: np.ndarray  # (3,) relative amplitudes of cos(m theta), m = 2, 3, 4
    phases: np.ndarray  # (3,)

    def level(self, theta: np.ndarray) -> np.ndarray:
        """Outline radius (relative) at polar angle ``theta`` of the normalised frame."""
        result = np.ones_like(theta)
        for m, (amplitude, phase) in enumerate(zip(self.harmonics, self.phases), start=2):
            result += float(amplitude) * np.cos(m * theta + float(phase))
        return result

    def frame(self, points: np.ndarray) -> np.ndarray:
        """Points (2, ...) in the gland's normalised frame (its outline is near the unit circle)."""
        local = points - self.centre.reshape((2,) + (1,) * (points.ndim - 1)).astype(points.dtype)
        c, s = np.cos(self.angle), np.sin(self.angle)
        return np.stack([(c * local[0] + s * local[1]) / self.radii[0], (c * local[1] - s * local[0]) / self.radii[1]])

    def distances(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Approximate signed distances (um) to the outer outline and to the lumen."""
        u = self.frame(points)
        rho = np.hypot(u[0], u[1]) / self.level(np.arctan2(u[1], u[0]))
        scale = np.float32(np.sqrt(self.radii[0] * self.radii[1]))
        return (rho - 1) * scale, (rho - np.float32(self.lumen)) * scale

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = self.radii.max() * (1 + np.abs(self.harmonics).sum()) + 2.0
        return self.centre - reach, self.centre + reach

    def ring_nuclei(self, rng: np.random.Generator) -> _Nuclei:
        """Epithelial nuclei along the basal side of the ring, long axis radial."""
        depth = self.lumen + 0.7 * (1 - self.lumen)
        count = int(round(2 * np.pi * depth * np.sqrt((self.radii**2).mean()) / 8.0))
        theta = (np.arange(count) + rng.uniform(-0.12, 0.12, count)) * (2 * np.pi / count)
        radial = depth * self.level(theta) + rng.uniform(-0.6, 0.6, count) / self.radii.mean()
        c, s = np.cos(self.angle), np.sin(self.angle)
        u, v = radial * np.cos(theta) * self.radii[0], radial * np.sin(theta) * self.radii[1]
        centres = self.centre + np.stack([c * u - s * v, s * u + c * v], axis=1)  # inverse of frame()
        offsets = centres - self.centre
        directions = offsets / np.linalg.norm(offsets, axis=1, keepdims=True)
        axes = np.stack([4.0 * rng.uniform(0.85, 1.15, count), 2.7 * rng.uniform(0.9, 1.1, count)], axis=1)
        keep = rng.random(count) > 0.04
        return _Nuclei(
            centres,
            axes,
            directions,
            np.full(count, _EPITHELIAL),
            rng.uniform(1.0, 1.3, count),
            rng.uniform(0.75, 1.0, count),
        ).subset(keep)


class _Tissue:
    """A synthetic tissue section in world micrometres (napari order y, x).

    A wavy tissue edge, glands (epithelial ring around a lumen), fibrous stroma, and
    nuclei (epithelial, fibroblast, immune).
    """

    def __init__(self, extent: np.ndarray, rng: np.random.Generator):
        self.extent = extent
        low, high = -_SLIDE_MARGIN_UM, extent + _SLIDE_MARGIN_UM
        # plain floats keep float32 point arithmetic in float32
        self.edge_phases = [float(v) for v in rng.uniform(0, 2 * np.pi, 2)]
        self.fibre_angle = float(rng.uniform(0, np.pi))
        self.fibre_phases = [float(v) for v in rng.uniform(0, 2 * np.pi, 3)]
        self.glands: list[_Gland] = []
        target = int(np.prod(high - low) / 25000)
        for _ in range(40 * target):
            if len(self.glands) >= target:
                break
            a = rng.uniform(28.0, 52.0)
            gland = _Gland(
                centre=rng.uniform(low, high),
                radii=np.array([a, a * rng.uniform(0.65, 0.95)]),
                angle=rng.uniform(0, np.pi),
                lumen=rng.uniform(0.4, 0.6),
                harmonics=rng.uniform(0, 0.06, 3) / np.arange(1, 4),
                phases=rng.uniform(0, 2 * np.pi, 3),
            )
            if self.edge_distance(gland.centre[:, None])[0] > -(a + 8.0):
                continue
            if any(np.linalg.norm(gland.centre - g.centre) < a + g.radii[0] + 12.0 for g in self.glands):
                continue
            self.glands.append(gland)
        self.nuclei = self._place_nuclei(rng, low, high)

    def edge_distance(self, points: np.ndarray) -> np.ndarray:
        """Signed distance (um, negative inside the tissue) to the wavy lower tissue edge."""
        height, width = (float(e) for e in self.extent)
        k1, k2 = 2 * np.pi / (0.6 * width), 2 * np.pi / (0.23 * width)
        a1, a2 = 0.05 * height, 0.02 * height
        x = points[1]
        edge = 0.84 * height + a1 * np.sin(k1 * x + self.edge_phases[0]) + a2 * np.sin(k2 * x + self.edge_phases[1])
        slope = a1 * k1 * np.cos(k1 * x + self.edge_phases[0]) + a2 * k2 * np.cos(k2 * x + self.edge_phases[1])
        return ((points[0] - edge) / np.sqrt(1 + slope**2)).astype(points.dtype)

    def fibre_direction(self) -> np.ndarray:
        return _unit(np.array(self.fibre_angle))

    def fibres(self, points: np.ndarray) -> np.ndarray:
        """Wavy collagen bundles in [0, 1], running along :meth:`fibre_direction`."""
        dy, dx = (float(v) for v in self.fibre_direction())
        along = dy * points[0] + dx * points[1]
        across = dx * points[0] - dy * points[1]
        phase = (
            across
            + 5.0 * np.sin(along * (2 * np.pi / 130) + self.fibre_phases[0])
            + 3.0 * np.sin((across / 90 + along / 210) * (2 * np.pi) + self.fibre_phases[1])
        )
        stripes = 0.5 + 0.5 * np.sin(phase * (2 * np.pi / 7.0))
        # bundles fade in and out along and across the fibres
        contrast = 0.55 + 0.45 * np.sin(along * (2 * np.pi / 90) + across * (2 * np.pi / 160) + self.fibre_phases[2])
        return (0.5 + contrast * (stripes - 0.5)).astype(np.float32)

    def in_stroma(self, points: np.ndarray, clearance: float) -> np.ndarray:
        """Whether points (2, N) lie in stroma at least ``clearance`` um from glands and edge."""
        inside = self.edge_distance(points) < -clearance
        for gland in self.glands:
            inside &= gland.distances(points)[0] > clearance
        return inside

    def _place_nuclei(self, rng: np.random.Generator, low: np.ndarray, high: np.ndarray) -> _Nuclei:
        area = float(np.prod(high - low))
        parts = [g.ring_nuclei(rng) for g in self.glands]

        # immune cells: a few inflammatory clusters plus scattered cells
        seeds = rng.uniform(low, high, size=(200, 2))
        seeds = seeds[self.in_stroma(seeds.T, 20.0)][:3]
        clusters = [s + rng.normal(0, 20.0, size=(60, 2)) for s in seeds]
        centres = np.concatenate(clusters + [rng.uniform(low, high, size=(int(area / 4000), 2))])
        centres = centres[self.in_stroma(centres.T, 3.0)]
        count = len(centres)
        radius = 3.0 * rng.uniform(0.9, 1.1, count)
        parts.append(
            _Nuclei(
                centres,
                np.stack([radius, radius * rng.uniform(0.92, 1.0, count)], axis=1),
                _unit(rng.uniform(0, np.pi, count)),
                np.full(count, _IMMUNE),
                rng.uniform(1.4, 1.6, count),
                rng.uniform(0.9, 1.0, count),
            )
        )

        # fibroblasts: elongated along the collagen
        centres = rng.uniform(low, high, size=(int(area / 420), 2))
        centres = centres[self.in_stroma(centres.T, 4.0)]
        count = len(centres)
        parts.append(
            _Nuclei(
                centres,
                np.stack([5.5 * rng.uniform(0.8, 1.2, count), 1.9 * rng.uniform(0.85, 1.15, count)], axis=1),
                _unit(self.fibre_angle + rng.normal(0, 0.15, count)),
                np.full(count, _STROMAL),
                rng.uniform(0.9, 1.1, count),
                rng.uniform(0.6, 0.8, count),
            )
        )
        nuclei = _Nuclei.concatenate(parts)

        # greedy thinning in priority order (epithelial, immune, stromal)
        pairs = cKDTree(nuclei.centres).query_pairs(max(_MIN_SPACING_UM.values()), output_type="ndarray")
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        gaps = np.linalg.norm(nuclei.centres[pairs[:, 0]] - nuclei.centres[pairs[:, 1]], axis=1)
        keep = np.ones(len(nuclei.centres), dtype=bool)
        for (first, second), gap in zip(pairs, gaps):
            kind = nuclei.kinds[second]
            if keep[first] and kind != _EPITHELIAL and gap < _MIN_SPACING_UM[kind]:
                keep[second] = False
        return nuclei.subset(keep)


def _slide_warp(extent: np.ndarray, rng: np.random.Generator) -> _Warp:
    centre = extent / 2
    angle = np.deg2rad(_SLIDE_ROTATION_DEG)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    vectors = rng.normal(size=(_SLIDE_BUMPS, 2))
    warp = _Warp(
        _homogeneous(rotation, centre, _SLIDE_TRANSLATION_UM),
        rng.uniform(0, 1, size=(_SLIDE_BUMPS, 2)) * extent,
        vectors / np.linalg.norm(vectors, axis=1, keepdims=True) * rng.uniform(0.6, 1.0, size=(_SLIDE_BUMPS, 1)),
        0.18 * float(extent.mean()),
    )
    axes = [np.arange(-_SLIDE_MARGIN_UM, e + _SLIDE_MARGIN_UM, 4.0) for e in extent]
    lattice = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(2, -1)
    return _scale_bumps(warp, lattice, _SLIDE_WARP_MAX_UM)


def _render_slide(tissue: _Tissue, shape, affine: np.ndarray, warp: _Warp | None) -> dict[str, np.ndarray]:
    """Component maps of the tissue (float32, ``shape``) on a grid seen through ``warp``.

    Every pixel centre is mapped back to the tissue's (fixed) world by ``T^-1`` and the
    tissue is evaluated there: no resampling.
    """
    shape = tuple(int(s) for s in shape)
    pixel = float(np.linalg.norm(affine[:2, :2], axis=0).mean())
    points = np.empty((2,) + shape, dtype=np.float32)
    flat = points.reshape(2, -1)
    for start, stop, chunk in _grid_chunks(shape, affine):
        flat[:, start:stop] = chunk if warp is None else warp.inverse(chunk)

    maps = {
        "tissue": _soft(tissue.edge_distance(flat), pixel).reshape(shape),
        "fibres": tissue.fibres(flat).reshape(shape),
    }
    epithelium = np.zeros(shape, dtype=np.float32)
    lumen = np.zeros(shape, dtype=np.float32)
    reach = (_SLIDE_WARP_MAX_UM + 2 * pixel) / pixel
    for gland in tissue.glands:
        low, high = gland.bounds()
        corners = np.stack(np.meshgrid(*zip(low, high), indexing="ij")).reshape(2, -1)
        if warp is not None:  # T = A (p + u): within max |u| of the affine image of the box
            corners = _apply(warp.matrix, corners)
        index = world_to_voxel(affine, corners.T)
        first = np.clip(np.floor(index.min(axis=0) - reach), 0, shape).astype(int)
        last = np.clip(np.ceil(index.max(axis=0) + reach) + 1, 0, shape).astype(int)
        window = (slice(first[0], last[0]), slice(first[1], last[1]))
        if first[0] >= last[0] or first[1] >= last[1]:
            continue
        outer, inner = gland.distances(points[(slice(None),) + window])
        ring, hole = _soft(outer, pixel), _soft(inner, pixel)
        epithelium[window] = np.maximum(epithelium[window], ring - hole)
        lumen[window] = np.maximum(lumen[window], hole)
    maps["epithelium"], maps["lumen"] = epithelium, lumen
    maps.update(_stamp_nuclei(tissue.nuclei, points, affine, warp, pixel))
    return maps


def _stamp_nuclei(nuclei: _Nuclei, points: np.ndarray, affine: np.ndarray, warp, pixel: float) -> dict:
    """Nuclear maps: each nucleus evaluated on a disc of pixels around its image position."""
    shape = points.shape[1:]
    size = shape[0] * shape[1]
    centres = nuclei.centres.T if warp is None else warp.forward(nuclei.centres.T)
    index = np.rint(world_to_voxel(affine, centres.T)).astype(np.int64)
    maps = {name: np.zeros(size) for name in ("nuclei", "haematoxylin", "dapi", "cd45")}
    for kind in (_EPITHELIAL, _STROMAL, _IMMUNE):
        members = np.flatnonzero(nuclei.kinds == kind)
        if members.size == 0:
            continue
        extent = nuclei.axes[members].max() + (_IMMUNE_CELL_RIM_UM if kind == _IMMUNE else 0.0)
        radius = (extent + pixel) / pixel * 1.15 + 1  # the warp stretches by a few per cent at most
        offsets = np.stack(np.meshgrid(*[np.arange(-int(radius), int(radius) + 1)] * 2, indexing="ij")).reshape(2, -1)
        offsets = offsets[:, np.hypot(*offsets) <= radius]
        rows = index[members, 0, None] + offsets[0]
        cols = index[members, 1, None] + offsets[1]
        inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
        owner = members[np.nonzero(inside)[0]]
        target = rows[inside] * shape[1] + cols[inside]
        local = points.reshape(2, -1)[:, target] - nuclei.centres[owner].T.astype(np.float32)
        direction = nuclei.directions[owner].T.astype(np.float32)
        along = direction[0] * local[0] + direction[1] * local[1]
        across = direction[0] * local[1] - direction[1] * local[0]
        occupancy = _soft(_ellipsoid(np.stack([along, across]), nuclei.axes[owner].T)[0], pixel)
        maps["nuclei"] += np.bincount(target, occupancy, minlength=size)
        maps["haematoxylin"] += np.bincount(target, occupancy * nuclei.haematoxylin[owner], minlength=size)
        maps["dapi"] += np.bincount(target, occupancy * nuclei.dapi[owner], minlength=size)
        if kind == _IMMUNE:
            rim = (nuclei.axes[owner, 0] + _IMMUNE_CELL_RIM_UM).astype(np.float32)
            cell = _soft(np.hypot(along, across) - rim, pixel)
            maps["cd45"] += np.bincount(target, cell - 0.5 * occupancy, minlength=size)
    maps["nuclei"] = np.minimum(maps["nuclei"], 1.0)
    maps["cd45"] = np.clip(maps["cd45"], 0.0, 1.0)
    return {name: value.astype(np.float32).reshape(shape) for name, value in maps.items()}


def _stain_variation(points_shape, affine: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Slow multiplicative staining variation across the slide (about +-6 %)."""
    y = voxel_to_world(affine, np.stack([np.arange(points_shape[0]), np.zeros(points_shape[0])], axis=1))[:, 0]
    x = voxel_to_world(affine, np.stack([np.zeros(points_shape[1]), np.arange(points_shape[1])], axis=1))[:, 1]
    rows = np.sin(y * (2 * np.pi / 300) + phases[0])[:, None]
    columns = np.cos(x * (2 * np.pi / 260) + phases[1])
    return (1 + 0.06 * rows * columns).astype(np.float32)


def _he_image(maps: dict, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Beer-Lambert mixing of haematoxylin and eosin into an RGB uint8 image."""
    nuclei, epithelium, lumen = maps["nuclei"], maps["epithelium"], maps["lumen"]
    stroma = maps["tissue"] * np.clip(1 - epithelium - lumen, 0, 1)
    haematoxylin = maps["haematoxylin"] + (0.08 * epithelium + 0.03 * stroma) * (1 - nuclei)
    eosin = (0.30 * epithelium + stroma * (0.08 + 0.28 * maps["fibres"])) * (1 - 0.7 * nuclei) + 0.03 * lumen
    variation = _stain_variation(nuclei.shape, affine, rng.uniform(0, 2 * np.pi, 2))
    density = 0.015 + variation[..., None] * (
        haematoxylin[..., None] * _HAEMATOXYLIN_OD.astype(np.float32) + eosin[..., None] * _EOSIN_OD.astype(np.float32)
    )
    rgb = 255.0 * np.power(np.float32(10.0), -density) + 2.5 * rng.standard_normal(density.shape, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _if_image(maps: dict, rng: np.random.Generator) -> np.ndarray:
    """Three fluorescence channels (DAPI, CK, CD45) with optical blur, shot and read noise."""
    tissue, nuclei = maps["tissue"], maps["nuclei"]
    channels = np.stack(
        [
            120 + 180 * tissue + 3200 * maps["dapi"],
            90 + 140 * tissue + 2600 * maps["epithelium"] * (1 - 0.75 * nuclei),
            80 + 110 * tissue + 2600 * maps["cd45"],
        ]
    )
    expected = ndimage.gaussian_filter(channels, (0, 0.8, 0.8))
    # shot noise (Gaussian limit of Poisson: every pixel expects >= 80 photons) + read noise
    spread = np.sqrt(expected + np.float32(_IF_READ_NOISE**2))
    counts = expected + spread * rng.standard_normal(expected.shape, dtype=np.float32)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def _choose_landmarks(tissue: _Tissue, warp: _Warp, fixed_box, moving_box) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated, isolated round-ish nuclei visible in both images (farthest-point order)."""
    nuclei = tissue.nuclei
    moved = warp.forward(nuclei.centres.T).T
    distance = cKDTree(nuclei.centres).query(nuclei.centres, k=2)[0][:, 1]
    eligible = (nuclei.kinds != _STROMAL) & (distance >= 8.0)
    for (low, high), where in ((fixed_box, nuclei.centres), (moving_box, moved)):
        eligible &= np.all((where > low + _LANDMARK_MARGIN_UM) & (where < high - _LANDMARK_MARGIN_UM), axis=1)
    candidates = np.flatnonzero(eligible)
    if candidates.size == 0:
        return np.zeros((0, 2)), np.zeros((0, 2))
    chosen = [candidates[np.argmin(np.linalg.norm(nuclei.centres[candidates] - tissue.extent / 2, axis=1))]]
    gap = np.linalg.norm(nuclei.centres[candidates] - nuclei.centres[chosen[0]], axis=1)
    while len(chosen) < min(_SLIDE_LANDMARKS, len(candidates)):
        chosen.append(candidates[np.argmax(gap)])
        gap = np.minimum(gap, np.linalg.norm(nuclei.centres[candidates] - nuclei.centres[chosen[-1]], axis=1))
    chosen = np.asarray(chosen)
    return nuclei.centres[chosen], moved[chosen]


def slide_pair(*, shape=(1024, 1024), seed: int = 0) -> list[ImageRecord]:
    """A brightfield H&E image and an immunofluorescence image of one synthetic tissue.

    The tissue (glands with an epithelial ring around a lumen, fibrous stroma with
    fibroblasts, clusters of immune cells, a wavy tissue edge) is defined in world
    micrometres (napari order y, x) and rendered twice:

    * **fixed**: H&E, RGB uint8, 0.5 um pixels, origin (0, 0); Beer-Lambert mixing of the
      standard haematoxylin and eosin optical-density vectors (blue-purple nuclei, pink
      stroma and cytoplasm, white lumens and glass), with slow staining variation and
      sensor noise;
    * **moving**: immunofluorescence, uint16 (3, rows, columns) with ``channel_axis=0``
      and channels DAPI (all nuclei), CK (epithelial cytoplasm), CD45 (immune cells);
      0.65 um pixels, origin (-3, 4) um; optical blur, Poisson and read noise; seen
      through a known smooth deformation.

    Convention as in :func:`misaligned_phantom`: ``T`` maps a fixed-world point to the
    moving-world point of the same tissue, ``T(p) = A (p + u(p))`` with ``A`` a rotation
    of 4 deg about the fixed field's centre plus a translation of (9, -13) um, and ``u``
    five Gaussian bumps (sigma 0.18 x the field size, ``max |u|`` = 6 um).

    Ground truth, in both records' metadata:

    * ``"landmarks"``: ``{"fixed": (30, 2), "moving": (30, 2)}`` world points (um,
      napari order) of matching isolated nucleus centres, ``moving = T(fixed)`` exactly;

    and in the moving record's ``metadata["ground_truth"]``: ``"kind"``
    (``"deformable"``), ``"fixed_to_moving"`` (``A``, 3 x 3 nested list),
    ``"displacement_um"`` (float32 (rows, columns, 2) on the fixed grid: the total
    displacement ``T(p) - p`` at each fixed pixel centre) and ``"affine"`` (the fixed
    grid's 3 x 3 affine, nested list).

    Parameters
    ----------
    shape : (int, int)
        Shape of the H&E image; the tissue field is ``shape * 0.5`` um and the
        immunofluorescence image covers about the same field.
    seed : int
        Seeds the tissue layout, the deformation and the noise.

    Returns
    -------
    list of ImageRecord
        ``[H&E, immunofluorescence]``.
    """
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng([seed, 20])
    extent = np.asarray(shape, dtype=np.float64) * _HE_PIXEL_UM
    tissue = _Tissue(extent, rng)
    warp = _slide_warp(extent, rng)

    fixed_affine = np.diag([_HE_PIXEL_UM, _HE_PIXEL_UM, 1.0])
    moving_shape = tuple(int(round(e / _IF_PIXEL_UM)) for e in extent)
    moving_affine = np.diag([_IF_PIXEL_UM, _IF_PIXEL_UM, 1.0])
    moving_affine[:2, 2] = _IF_ORIGIN_UM

    boxes = [
        (np.zeros(2) - _HE_PIXEL_UM / 2, extent - _HE_PIXEL_UM / 2),
        (np.asarray(_IF_ORIGIN_UM), np.asarray(_IF_ORIGIN_UM) + np.asarray(moving_shape) * _IF_PIXEL_UM),
    ]
    fixed_points, moving_points = _choose_landmarks(tissue, warp, *boxes)
    landmarks = {"fixed": fixed_points, "moving": moving_points}
    truth = {
        "kind": "deformable",
        "fixed_to_moving": warp.matrix.tolist(),
        "displacement_um": warp.displacement_field(shape, fixed_affine),
        "affine": fixed_affine.tolist(),
    }
    common = {"source": SOURCE, "source_path": None, "seed": seed, "landmarks": landmarks}
    he = _he_image(_render_slide(tissue, shape, fixed_affine, None), fixed_affine, np.random.default_rng([seed, 21]))
    fluorescence = _if_image(
        _render_slide(tissue, moving_shape, moving_affine, warp), np.random.default_rng([seed, 22])
    )
    return [
        ImageRecord(
            data=he,
            affine=fixed_affine,
            name="slide H&E",
            units="um",
            metadata={**common, "modality": "H&E", "role": "fixed"},
            rgb=True,
        ),
        ImageRecord(
            data=fluorescence,
            affine=moving_affine,
            name="slide IF",
            units="um",
            metadata={**common, "modality": "IF", "role": "moving", "ground_truth": truth},
            channel_axis=0,
            channel_names=list(SLIDE_CHANNELS),
        ),
    ]


# ------------------------------------------------------------ napari sample providers

_DISPLAY = {
    "MR-T1": {"colormap": "gray"},
    "MR-T2": {"colormap": "gray"},
    "CT": {"colormap": "gray", "contrast_limits": [-100.0, 200.0]},
    "PET": {"colormap": "inferno", "blending": "additive", "contrast_limits": [0.0, 12.0]},
    "IF": {
        "colormap": ["blue", "green", "magenta"],
        "blending": "additive",
        "contrast_limits": [[100.0, 3000.0], [100.0, 2500.0], [100.0, 2500.0]],
    },
}


def _layer(record: ImageRecord, **display) -> tuple:
    """``record.to_layer_data()`` with display settings for its modality, then ``display``."""
    data, kwargs, layer_type = record.to_layer_data()
    if layer_type == "image":
        kwargs.update(_DISPLAY.get(record.metadata.get("modality"), {}))
    kwargs.update(display)
    return data, kwargs, layer_type


def sample_head_phantom() -> list[tuple]:
    """napari sample: the head phantom (T1, T2, CT, PET) and its T1-grid tissue labels.

    T1 is shown with PET blended on top; T2, CT and the labels start hidden.

    Returns
    -------
    list of tuple
        napari LayerDataTuples ``(data, kwargs, layer_type)``: T1, T2, CT, PET and labels.
    """
    t1, t2, ct, pet, labels = _head_phantom(DEFAULT_HEAD_FOV_MM, 0, labels=True)
    return [
        _layer(t1),
        _layer(t2, visible=False),
        _layer(ct, visible=False),
        _layer(pet, opacity=0.6),
        _layer(labels, visible=False, opacity=0.5),
    ]


def _misaligned_sample(kind: str) -> list[tuple]:
    fixed, moving = misaligned_phantom(kind)[:2]
    overlay = {"blending": "additive"}
    return [
        _layer(fixed, colormap="green", **overlay),
        _layer(moving, colormap="magenta", **overlay),
    ]


def sample_misaligned_rigid() -> list[tuple]:
    """napari sample: T1 (fixed, green) and T2 (moving, magenta) misaligned by a known rigid motion.

    Returns
    -------
    list of tuple
        napari LayerDataTuples ``(data, kwargs, layer_type)``: fixed, moving.
    """
    return _misaligned_sample("rigid")


def sample_misaligned_affine() -> list[tuple]:
    """napari sample: T1 (fixed, green) and T2 (moving, magenta) misaligned by a known affine.

    Returns
    -------
    list of tuple
        napari LayerDataTuples ``(data, kwargs, layer_type)``: fixed, moving.
    """
    return _misaligned_sample("affine")


def sample_misaligned_deformable() -> list[tuple]:
    """napari sample: T1 (fixed, green) and T2 (moving, magenta) with a known smooth deformation.

    Returns
    -------
    list of tuple
        napari LayerDataTuples ``(data, kwargs, layer_type)``: fixed, moving.
    """
    return _misaligned_sample("deformable")


def sample_slide_pair() -> list[tuple]:
    """napari sample: H&E and immunofluorescence of one tissue, plus their matching landmarks.

    Returns
    -------
    list of tuple
        napari LayerDataTuples ``(data, kwargs, layer_type)``: H&E, immunofluorescence
        (three channels), and the fixed and moving landmarks as points.
    """
    he, fluorescence = slide_pair()
    landmarks = he.metadata["landmarks"]
    points = {"size": 6.0, "symbol": "cross", "units": ("um", "um")}
    return [
        _layer(he),
        _layer(fluorescence),
        (landmarks["fixed"], {"name": "landmarks (H&E)", "face_color": "yellow", **points}, "points"),
        (landmarks["moving"], {"name": "landmarks (IF)", "face_color": "cyan", **points}, "points"),
    ]
