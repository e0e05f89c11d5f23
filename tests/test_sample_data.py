"""Synthetic sample data: determinism, world-space consistency, contrast, noise, ground truth."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from napari_mmfuse import sample_data as sd
from napari_mmfuse.core.space import orientation_code, resample, spacing_of, voxel_to_world, world_to_voxel

TIMINGS: dict[str, float] = {}
CLASS = {name: label for label, name in sd.HEAD_CLASSES.items()}


def timed(name, function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    TIMINGS[name] = time.perf_counter() - start
    return result


@pytest.fixture(scope="module")
def head():
    return {r.metadata["modality"]: r for r in timed("head_phantom()", sd.head_phantom)}


@pytest.fixture(scope="module")
def labels():
    out = {}
    for modality in sd.HEAD_MODALITIES:
        out[modality] = timed(f"head_phantom_labels({modality})", sd.head_phantom_labels, modality=modality)
    return out


@pytest.fixture(scope="module")
def misaligned():
    return {
        kind: timed(f"misaligned_phantom({kind}, labels=True)", sd.misaligned_phantom, kind, labels=True)
        for kind in ("rigid", "affine", "deformable")
    }


@pytest.fixture(scope="module")
def slides():
    return timed("slide_pair()", sd.slide_pair)


def class_means(image, label_map):
    data = np.asarray(image, dtype=np.float64).ravel()
    classes = label_map.ravel()
    sums = np.bincount(classes, weights=data, minlength=len(sd.HEAD_CLASSES))
    counts = np.bincount(classes, minlength=len(sd.HEAD_CLASSES))
    return {name: sums[label] / counts[label] for label, name in sd.HEAD_CLASSES.items()}


def centroid(record, classes):
    """World centroid of the voxels holding any of ``classes``."""
    index = np.argwhere(np.isin(record.data, [CLASS[c] for c in classes]))
    return voxel_to_world(record.affine, index.mean(axis=0))


# ------------------------------------------------------------------------- head phantom


def test_head_phantom_records(head):
    assert list(head) == list(sd.HEAD_MODALITIES)
    for modality, record in head.items():
        assert record.units == "mm"
        assert record.metadata["source"] == "napari_mmfuse.sample_data"
        assert record.metadata["frame"] == "LPS"
        assert record.name.startswith("phantom ")
        assert set(record.metadata["tissue_values"]) == set(sd.HEAD_CLASSES.values())
        assert record.data.dtype == (np.int16 if modality == "CT" else np.float32)
        data, kwargs, layer_type = record.to_layer_data()
        assert layer_type == "image" and kwargs["affine"].shape == (4, 4)
    # every modality has its own grid
    grids = [(r.data.shape, r.affine.tobytes()) for r in head.values()]
    assert len(set(grids)) == 4
    assert orientation_code(head["MR-T1"].affine) == "SPL"
    assert orientation_code(head["CT"].affine)[0] == "I"  # stored superior slice first
    t2_direction = head["MR-T2"].affine[:3, :3] / spacing_of(head["MR-T2"].affine)
    assert np.abs(t2_direction - np.diag(np.diag(t2_direction))).max() > 0.1  # oblique


def test_pet_is_coarser_with_its_own_origin(head):
    pet, t1 = head["PET"], head["MR-T1"]
    assert np.allclose(spacing_of(pet.affine), 4.0)
    assert spacing_of(pet.affine).min() > 2 * spacing_of(t1.affine).max()
    assert spacing_of(head["CT"].affine)[0] > spacing_of(head["CT"].affine)[1]  # anisotropic
    assert not np.allclose(pet.affine[:3, 3], t1.affine[:3, 3])


def test_labels_cover_every_class_on_the_t1_grid(head, labels):
    record = labels["MR-T1"]
    assert record.layer_type == "labels" and record.data.dtype == np.uint8
    assert record.data.shape == head["MR-T1"].data.shape
    np.testing.assert_array_equal(record.affine, head["MR-T1"].affine)
    assert record.metadata["classes"] == sd.HEAD_CLASSES
    assert set(np.unique(record.data)) == set(sd.HEAD_CLASSES)
    for modality in sd.HEAD_MODALITIES:
        assert labels[modality].data.shape == head[modality].data.shape


def test_deterministic_and_seeded():
    small = (48.0, 48.0, 48.0)
    first = sd.head_phantom(size_mm=small, seed=3)
    second = sd.head_phantom(size_mm=small, seed=3)
    other = sd.head_phantom(size_mm=small, seed=4)
    for a, b, c in zip(first, second, other):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.affine, b.affine)
        assert not np.array_equal(a.data, c.data)
    np.testing.assert_array_equal(
        sd.head_phantom_labels(size_mm=small, seed=3).data, sd.head_phantom_labels(size_mm=small, seed=3).data
    )
    slide_a, slide_b = sd.slide_pair(shape=(256, 256), seed=2), sd.slide_pair(shape=(256, 256), seed=2)
    for a, b in zip(slide_a, slide_b):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.metadata["landmarks"]["moving"], b.metadata["landmarks"]["moving"])


def test_ct_bone_lands_on_the_dark_t1_skull(head, labels):
    """World-space consistency: CT (other grid) resampled onto T1 puts bone on the skull."""
    t1, ct, truth = head["MR-T1"], head["CT"], labels["MR-T1"].data
    ct_on_t1 = resample(ct.data, ct.affine, t1.data.shape, t1.affine, fill_value=-1000.0)
    bone = ct_on_t1 > 500
    skull = truth == CLASS["skull"]
    dice = 2 * np.count_nonzero(bone & skull) / (np.count_nonzero(bone) + np.count_nonzero(skull))
    assert dice > 0.85
    # that bone is dark on T1, between the bright scalp and the brain
    means = class_means(t1.data, truth)
    assert t1.data[bone].mean() < 0.3 * means["scalp"]
    assert t1.data[bone].mean() < 0.3 * means["white matter"]


def test_contrast_relations(head, labels):
    m = {modality: class_means(head[modality].data, labels[modality].data) for modality in sd.HEAD_MODALITIES}
    t1, t2, ct, pet = m["MR-T1"], m["MR-T2"], m["CT"], m["PET"]
    assert t1["white matter"] > t1["grey matter"] > t1["CSF"] > t1["skull"]
    assert t1["scalp"] > t1["white matter"]
    assert t1["grey matter"] > t1["ventricles"]
    assert t2["CSF"] > t2["grey matter"] > t2["white matter"] > t2["skull"]
    assert t2["ventricles"] > t2["oedema"] > t2["white matter"]
    assert ct["skull"] > 800
    assert ct["background"] < -950
    assert ct["lesion rim"] > ct["grey matter"] > ct["white matter"] > ct["ventricles"]
    assert 20 < ct["white matter"] < ct["grey matter"] < 45
    assert pet["lesion rim"] > pet["grey matter"] > pet["white matter"] > pet["ventricles"]
    assert pet["deep grey matter"] > pet["white matter"] > pet["skull"]
    # non-monotonic across modalities: the GM / WM / CSF orderings differ between T1 and T2
    tissues = ["grey matter", "white matter", "CSF"]
    assert np.argsort([t1[t] for t in tissues]).tolist() != np.argsort([t2[t] for t in tissues]).tolist()


def test_modality_noise(head, labels):
    for modality in sd.HEAD_MODALITIES:
        data = head[modality].data.astype(np.float64)
        interior = ndimage.binary_erosion(labels[modality].data == CLASS["white matter"], iterations=2)
        assert interior.sum() > 100
        assert data[interior].std() > 0
        local = ndimage.uniform_filter(data, 3)
        local_var = ndimage.uniform_filter(data**2, 3) - local**2
        assert np.median(local_var[interior]) > 0
    for modality in ("MR-T1", "MR-T2"):  # Rician: positive magnitude in the air
        air = head[modality].data[labels[modality].data == CLASS["background"]]
        assert air.min() >= 0 and air.mean() > 5
    ct_brain = head["CT"].data[ndimage.binary_erosion(labels["CT"].data == CLASS["white matter"], iterations=2)]
    assert 5 < ct_brain.std() < 12  # Gaussian noise in HU
    # PET: PSF blur correlates neighbouring voxels
    pet = head["PET"].data
    brain = ndimage.binary_erosion(labels["PET"].data == CLASS["white matter"])
    residual = pet - ndimage.uniform_filter(pet, 5)
    shifted = np.roll(residual, 1, axis=2)
    assert np.corrcoef(residual[brain], shifted[brain])[0, 1] > 0.1


# --------------------------------------------------------------------- misaligned pairs


def map_points(truth, points):
    """Apply the ground-truth fixed -> moving transform to world points (N, 3)."""
    if truth["kind"] == "deformable":
        index = world_to_voxel(np.asarray(truth["affine"]), points)
        field = truth["displacement_mm"]
        shift = np.stack([ndimage.map_coordinates(field[..., a], index.T, order=1) for a in range(3)], axis=1)
        return points + shift
    matrix = np.asarray(truth["fixed_to_moving"])
    return points @ matrix[:3, :3].T + matrix[:3, 3]


@pytest.mark.parametrize("kind", ["rigid", "affine", "deformable"])
def test_misalignment_ground_truth(misaligned, head, kind):
    fixed, moving, fixed_labels, moving_labels = misaligned[kind]
    truth = moving.metadata["ground_truth"]
    assert truth["kind"] == kind
    assert fixed.metadata["role"] == "fixed" and moving.metadata["role"] == "moving"
    assert moving.metadata["modality"] == "MR-T2"
    np.testing.assert_array_equal(fixed.data, head["MR-T1"].data)  # fixed is the T1 phantom
    matrix = np.asarray(truth["fixed_to_moving"])
    assert matrix.shape == (4, 4)
    # structures move exactly as the ground truth says (to well within a voxel)
    for classes in (["lesion rim", "lesion core"], ["ventricles"], ["deep grey matter"]):
        expected = map_points(truth, centroid(fixed_labels, classes)[None])[0]
        assert np.linalg.norm(centroid(moving_labels, classes) - expected) < 1.0, classes
    # and so does every voxel: moving labels sampled at T(p) match the fixed labels at p
    points = voxel_to_world(fixed_labels.affine, np.argwhere(fixed_labels.data > 0)[::7])
    index = np.rint(world_to_voxel(moving_labels.affine, map_points(truth, points))).astype(int)
    index = np.clip(index, 0, np.array(moving_labels.data.shape) - 1)
    sampled = moving_labels.data[tuple(index.T)]
    expected = fixed_labels.data[tuple(np.rint(world_to_voxel(fixed_labels.affine, points)).astype(int).T)]
    assert np.mean(sampled == expected) > 0.8
    # the moving head lies wholly inside its grid
    border = np.ones(moving_labels.data.shape, dtype=bool)
    border[1:-1, 1:-1, 1:-1] = False
    assert not moving_labels.data[border].any()
    # and it did move: the untransformed fixed centroid is far from the moving one
    lesion = ["lesion rim", "lesion core"]
    assert np.linalg.norm(centroid(moving_labels, lesion) - centroid(fixed_labels, lesion)) > 3.0


def test_rigid_and_affine_matrices(misaligned):
    rigid = np.asarray(misaligned["rigid"][1].metadata["ground_truth"]["fixed_to_moving"])
    np.testing.assert_allclose(rigid[:3, :3] @ rigid[:3, :3].T, np.eye(3), atol=1e-12)
    angle = np.degrees(np.arccos((np.trace(rigid[:3, :3]) - 1) / 2))
    assert 8 < angle < 16
    affine = np.asarray(misaligned["affine"][1].metadata["ground_truth"]["fixed_to_moving"])
    singular = np.linalg.svd(affine[:3, :3], compute_uv=False)
    assert singular.max() > 1.05 and singular.min() < 0.97


def test_deformable_field_is_smooth_and_invertible(misaligned):
    fixed, moving = misaligned["deformable"][:2]
    truth = moving.metadata["ground_truth"]
    field = truth["displacement_mm"]
    assert field.shape == fixed.data.shape + (3,) and field.dtype == np.float32
    np.testing.assert_allclose(np.asarray(truth["affine"]), fixed.affine)
    # the non-affine part peaks at about 6 mm
    points = voxel_to_world(fixed.affine, np.argwhere(np.ones(fixed.data.shape, bool))[::11])
    index = world_to_voxel(fixed.affine, points)
    total = np.stack([ndimage.map_coordinates(field[..., a], index.T, order=1) for a in range(3)], axis=1)
    matrix = np.asarray(truth["fixed_to_moving"])
    local = (points + total - matrix[:3, 3]) @ np.linalg.inv(matrix[:3, :3]).T - points
    assert 4.0 < np.linalg.norm(local, axis=1).max() <= 6.05
    # positive Jacobian determinant everywhere (on every other voxel)
    coarse = field[::2, ::2, ::2]
    spacing = 2 * spacing_of(fixed.affine)
    jacobian = np.stack([np.stack(np.gradient(coarse[..., a], *spacing), axis=-1) for a in range(3)], axis=-2)
    assert np.linalg.det(jacobian + np.eye(3)).min() > 0.3


def test_misaligned_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        sd.misaligned_phantom("elastic")
    with pytest.raises(ValueError, match="modality"):
        sd.misaligned_phantom("rigid", moving_modality="US")


# --------------------------------------------------------------------------- slide pair


def test_slide_pair_records(slides):
    he, fluorescence = slides
    assert he.rgb and he.data.dtype == np.uint8 and he.data.shape == (1024, 1024, 3)
    assert he.units == "um" and np.allclose(spacing_of(he.affine), 0.5)
    assert fluorescence.channel_axis == 0 and fluorescence.channel_names == ["DAPI", "CK", "CD45"]
    assert fluorescence.data.dtype == np.uint16 and fluorescence.data.shape[0] == 3
    assert not np.allclose(spacing_of(fluorescence.affine), 0.5)
    names = fluorescence.to_layer_data()[1]["name"]
    assert names == ["slide IF [DAPI]", "slide IF [CK]", "slide IF [CD45]"]
    # H&E: white glass/lumen and dark blue-purple nuclei (blue channel highest there)
    pixels = he.data.reshape(-1, 3).astype(int)
    assert np.mean(pixels.min(axis=1) > 220) > 0.05
    dark = pixels[pixels.sum(axis=1) < 250]
    assert len(dark) > 1000 and np.all(dark.mean(axis=0)[2] > dark.mean(axis=0)[:2])
    # IF: every channel has signal above its background
    for channel in fluorescence.data:
        assert np.percentile(channel, 99.5) > 4 * np.median(channel)


def test_slide_landmarks_correspond(slides):
    he, fluorescence = slides
    landmarks = fluorescence.metadata["landmarks"]
    fixed, moving = landmarks["fixed"], landmarks["moving"]
    assert fixed.shape == moving.shape == (30, 2)
    np.testing.assert_array_equal(he.metadata["landmarks"]["fixed"], fixed)
    # the ground-truth field maps fixed landmarks onto moving ones (< 0.5 moving pixel)
    truth = fluorescence.metadata["ground_truth"]
    field = truth["displacement_um"]
    assert field.shape == he.data.shape[:2] + (2,)
    index = world_to_voxel(np.asarray(truth["affine"]), fixed)
    shift = np.stack([ndimage.map_coordinates(field[..., a], index.T, order=1) for a in range(2)], axis=1)
    error_px = np.linalg.norm(fixed + shift - moving, axis=1) / spacing_of(fluorescence.affine).min()
    assert error_px.max() < 0.5
    # they sit on nuclei: bright DAPI in the IF image, dark haematoxylin in the H&E image
    dapi = fluorescence.data[0].astype(float)
    at = np.rint(world_to_voxel(fluorescence.affine, moving)).astype(int)
    assert np.all(dapi[tuple(at.T)] > 0.5 * np.percentile(dapi, 99))
    density = -np.log10(np.clip(he.data.astype(float), 1, None) / 255)
    haematoxylin = density @ sd.HAEMATOXYLIN_OD
    at = np.rint(world_to_voxel(he.affine, fixed)).astype(int)
    assert np.all(haematoxylin[tuple(at.T)] > 0.5 * np.percentile(haematoxylin, 99))
    # the deformation is not trivial: every landmark moved
    assert np.linalg.norm(fixed - moving, axis=1).min() > 1.0


# ---------------------------------------------------------------- napari sample providers


@pytest.fixture
def cached_generators(monkeypatch, head, labels, misaligned, slides):
    """Make the sample providers reuse the module's renders instead of rendering again."""
    monkeypatch.setattr(sd, "render_head_phantom", lambda *a, **k: [*head.values(), labels["MR-T1"]])
    monkeypatch.setattr(sd, "misaligned_phantom", lambda kind, **k: misaligned[kind])
    monkeypatch.setattr(sd, "slide_pair", lambda **k: slides)


@pytest.mark.filterwarnings("ignore:Non-orthogonal slicing")  # the oblique T2 grid, as intended
def test_sample_providers_give_layer_data(cached_generators):
    from napari.components import ViewerModel

    providers = {
        sd.sample_head_phantom: 5,
        sd.sample_misaligned_rigid: 2,
        sd.sample_misaligned_affine: 2,
        sd.sample_misaligned_deformable: 2,
        sd.sample_slide_pair: 6,
    }
    viewer = ViewerModel()
    for provider, layer_count in providers.items():
        viewer.layers.clear()
        for data, kwargs, layer_type in provider():
            assert layer_type in ("image", "labels", "points")
            viewer._add_layer_from_data(data, kwargs, layer_type)
        assert len(viewer.layers) == layer_count, provider.__name__
    by_name = {t[1]["name"] if isinstance(t[1]["name"], str) else "IF": t for t in sd.sample_head_phantom()}
    assert by_name["phantom PET"][1]["colormap"] == "inferno"
    assert by_name["phantom PET"][1]["blending"] == "additive"
    assert by_name["phantom CT"][1]["contrast_limits"] == [-100.0, 200.0]
    assert by_name["phantom labels"][2] == "labels"


#: Most seconds one generator may take: a napari sample must open while the user waits
#: (about 1 s each on a 2-core machine; the margin absorbs a busy machine).
GENERATION_BUDGET_S = 20.0


def test_generation_times_stay_interactive(capsys, head, labels, misaligned, slides):
    with capsys.disabled():
        print("\nsample generation times (s):")
        for name, seconds in TIMINGS.items():
            print(f"  {name:45s} {seconds:6.2f}")
    expected = {"head_phantom()", "slide_pair()"}
    expected |= {f"head_phantom_labels({m})" for m in sd.HEAD_MODALITIES}
    expected |= {f"misaligned_phantom({k}, labels=True)" for k in ("rigid", "affine", "deformable")}
    assert set(TIMINGS) == expected
    slow = {name: seconds for name, seconds in TIMINGS.items() if seconds > GENERATION_BUDGET_S}
    assert not slow, f"sample generators over {GENERATION_BUDGET_S} s: {slow}"
