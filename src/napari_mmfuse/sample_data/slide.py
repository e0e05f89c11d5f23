"""The slide pair: one synthetic tissue section as H&E brightfield and as immunofluorescence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..core.space import voxel_to_world, world_to_voxel
from ..io import ImageRecord
from .common import SOURCE, Warp, apply_affine, ellipsoid_distance, grid_chunks, homogeneous, scale_bumps, soft_inside

SLIDE_CHANNELS = ("DAPI", "CK", "CD45")
_HE_PIXEL_UM = 0.5
_IF_PIXEL_UM = 0.65
_IF_ORIGIN_UM = (-3.0, 4.0)
#: Ruifrok & Johnston optical-density vectors (R, G, B), as in scikit-image's rgb2hed.
HAEMATOXYLIN_OD = np.array([0.650, 0.704, 0.286]) / np.linalg.norm([0.650, 0.704, 0.286])
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


def _slide_warp(extent: np.ndarray, rng: np.random.Generator) -> Warp:
    centre = extent / 2
    angle = np.deg2rad(_SLIDE_ROTATION_DEG)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    vectors = rng.normal(size=(_SLIDE_BUMPS, 2))
    warp = Warp(
        homogeneous(rotation, centre, _SLIDE_TRANSLATION_UM),
        rng.uniform(0, 1, size=(_SLIDE_BUMPS, 2)) * extent,
        vectors / np.linalg.norm(vectors, axis=1, keepdims=True) * rng.uniform(0.6, 1.0, size=(_SLIDE_BUMPS, 1)),
        0.18 * float(extent.mean()),
    )
    axes = [np.arange(-_SLIDE_MARGIN_UM, e + _SLIDE_MARGIN_UM, 4.0) for e in extent]
    lattice = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(2, -1)
    return scale_bumps(warp, lattice, _SLIDE_WARP_MAX_UM)


def _render_slide(tissue: _Tissue, shape, affine: np.ndarray, warp: Warp | None) -> dict[str, np.ndarray]:
    """Component maps of the tissue (float32, ``shape``) on a grid seen through ``warp``.

    Every pixel centre is mapped back to the tissue's (fixed) world by ``T^-1`` and the
    tissue is evaluated there: no resampling.
    """
    shape = tuple(int(s) for s in shape)
    pixel = float(np.linalg.norm(affine[:2, :2], axis=0).mean())
    points = np.empty((2,) + shape, dtype=np.float32)
    flat = points.reshape(2, -1)
    for start, stop, chunk in grid_chunks(shape, affine):
        flat[:, start:stop] = chunk if warp is None else warp.inverse(chunk)

    maps = {
        "tissue": soft_inside(tissue.edge_distance(flat), pixel).reshape(shape),
        "fibres": tissue.fibres(flat).reshape(shape),
    }
    epithelium = np.zeros(shape, dtype=np.float32)
    lumen = np.zeros(shape, dtype=np.float32)
    reach = (_SLIDE_WARP_MAX_UM + 2 * pixel) / pixel
    for gland in tissue.glands:
        low, high = gland.bounds()
        corners = np.stack(np.meshgrid(*zip(low, high), indexing="ij")).reshape(2, -1)
        if warp is not None:  # T = A (p + u): within max |u| of the affine image of the box
            corners = apply_affine(warp.matrix, corners)
        index = world_to_voxel(affine, corners.T)
        first = np.clip(np.floor(index.min(axis=0) - reach), 0, shape).astype(int)
        last = np.clip(np.ceil(index.max(axis=0) + reach) + 1, 0, shape).astype(int)
        window = (slice(first[0], last[0]), slice(first[1], last[1]))
        if first[0] >= last[0] or first[1] >= last[1]:
            continue
        outer, inner = gland.distances(points[(slice(None),) + window])
        ring, hole = soft_inside(outer, pixel), soft_inside(inner, pixel)
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
        occupancy = soft_inside(ellipsoid_distance(np.stack([along, across]), nuclei.axes[owner].T)[0], pixel)
        maps["nuclei"] += np.bincount(target, occupancy, minlength=size)
        maps["haematoxylin"] += np.bincount(target, occupancy * nuclei.haematoxylin[owner], minlength=size)
        maps["dapi"] += np.bincount(target, occupancy * nuclei.dapi[owner], minlength=size)
        if kind == _IMMUNE:
            rim = (nuclei.axes[owner, 0] + _IMMUNE_CELL_RIM_UM).astype(np.float32)
            cell = soft_inside(np.hypot(along, across) - rim, pixel)
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
        haematoxylin[..., None] * HAEMATOXYLIN_OD.astype(np.float32) + eosin[..., None] * _EOSIN_OD.astype(np.float32)
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


def _choose_landmarks(tissue: _Tissue, warp: Warp, fixed_box, moving_box) -> tuple[np.ndarray, np.ndarray]:
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
