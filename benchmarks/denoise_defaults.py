"""Why the registry's denoise defaults are what they are: PSNR of the candidates on scikit-image pictures.

Bilateral ``sigma_spatial`` 1.0 (core's former default) against 1.5 (the widget's former default, now
the registry's), ``sigma_range`` left to the estimate; TV ``weight`` = the estimated noise sigma (the
registry's) against 0.8 sigma. Camera, moon and coins with Gaussian noise 0.05 / 0.1 / 0.2 (seed 0).

Usage::

    python benchmarks/denoise_defaults.py
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from skimage import data, img_as_float  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio as psnr  # noqa: E402

from napari_mmfuse.core.denoise import denoise, estimate_noise  # noqa: E402


def main() -> None:
    print(f"{'image':8s}{'noise':>6s}  {'bilateral 1.0':>14s}{'1.5':>8s}{'gain':>7s}  {'tv sigma':>9s}{'0.8 sigma':>10s}")
    for name in ("camera", "moon", "coins"):
        clean = img_as_float(getattr(data, name)()).astype(np.float32)
        for noise in (0.05, 0.1, 0.2):
            noisy = (clean + np.random.default_rng(0).normal(0, noise, clean.shape)).astype(np.float32)
            b10, b15, t10, t08 = (
                psnr(clean, denoise(noisy, method, device="cpu", **params), data_range=1)
                for method, params in (("bilateral", {"sigma_spatial": 1.0}), ("bilateral", {"sigma_spatial": 1.5}),
                                       ("tv", {"weight": estimate_noise(noisy)}),
                                       ("tv", {"weight": 0.8 * estimate_noise(noisy)}))
            )
            print(f"{name:8s}{noise:6.2f}  {b10:14.2f}{b15:8.2f}{b15 - b10:+7.2f}  {t10:9.2f}{t08:10.2f}")


if __name__ == "__main__":
    main()
