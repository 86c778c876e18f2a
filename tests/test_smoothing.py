"""Anomaly maps are smoothed inside the body only (inference/smoothing.py)."""

import numpy as np

from screener_plans.inference.smoothing import smooth_in_body


def _body(shape=(30, 30, 20)):
    body = np.zeros(shape, bool)
    body[5:25, 5:25, 3:17] = True
    return body


def test_air_never_leaks_into_the_body():
    body = _body()
    score = np.where(body, 2.0, 1000.0).astype(np.float32)  # a uniform body in very high-scoring air
    out = smooth_in_body(score, body, 3.0, (1.5, 1.5, 2.5))
    np.testing.assert_allclose(out[body], 2.0, rtol=1e-5)
    assert np.array_equal(out[~body], score[~body])  # the outside is left as it was


def test_a_lesion_sized_blob_keeps_its_rank_and_isolated_noise_does_not():
    body = _body()
    rng = np.random.default_rng(0)
    score = rng.normal(0.0, 1.0, body.shape).astype(np.float32)
    blob = np.zeros_like(body)
    blob[12:18, 12:18, 8:12] = True  # 9 x 9 x 10 mm
    score[blob] += 2.0
    spike = (8, 20, 5)
    score[spike] = 8.0  # one noisy voxel, far above the blob
    out = smooth_in_body(score, body, 2.0, (1.5, 1.5, 2.5))
    normal = body & ~blob
    normal[spike] = False

    def auroc(s):
        pos, neg = s[blob], s[normal]
        return (np.searchsorted(np.sort(neg), pos).sum()) / (pos.size * neg.size)

    assert auroc(out) > auroc(score) + 0.05 and auroc(out) > 0.97
    assert out[spike] < np.median(out[blob])  # the lone voxel no longer outranks the lesion


def test_zero_sigma_is_the_identity():
    body = _body()
    score = np.random.default_rng(1).normal(size=body.shape).astype(np.float32)
    assert np.array_equal(smooth_in_body(score, body, 0.0, (1.0, 1.0, 1.0)), score)
