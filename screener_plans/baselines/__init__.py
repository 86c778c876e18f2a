"""Baselines for the quality benchmark: intensity-only density and a 3D convolutional autoencoder.

Both expose a scorer with Screener's call signature ``scorer(window (B,1,X,Y,Z), origin_mm (B,3),
spacing (B,3)) -> (B,1,X,Y,Z)``, so ``Predictor``, ``calibrate`` and ``ScorerInferer`` use them unchanged.
"""

from screener_plans.baselines.autoencoder import (
    AutoencoderScorer,
    ConvAutoencoder,
    autoencoder_path,
    autoencoder_scorer,
    build_autoencoder,
    load_autoencoder,
    train_autoencoder,
)
from screener_plans.baselines.intensity import IntensityBaseline, IntensityScorer, intensity_path

__all__ = [
    "AutoencoderScorer",
    "ConvAutoencoder",
    "IntensityBaseline",
    "IntensityScorer",
    "autoencoder_path",
    "autoencoder_scorer",
    "build_autoencoder",
    "intensity_path",
    "load_autoencoder",
    "train_autoencoder",
]
