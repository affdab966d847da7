"""The two fitted parts of the similarity tier's dbscan method: the t-SNE (affinities and gradient against direct dense
computations, the embedding) and the classifier that labels non-train videos."""

import numba
import numpy as np
import pytest

from features import label_mlp, tsne
from features.similarity import DBSCANClusters


@pytest.fixture
def blobs():
    """Three well separated groups of 60 points in 10-d."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 60)
    return np.eye(10)[labels] * 12 + rng.normal(size=(180, 10)), labels


def test_affinities_reach_the_perplexity_and_are_symmetric(blobs):
    x, _ = blobs
    d2 = np.sort(((x[:, None] - x[None]) ** 2).sum(-1), axis=1)[:, 1:92]  # each point's 91 neighbours
    cond = tsne._conditional_p(d2, 30.0)
    np.testing.assert_allclose(cond.sum(1), 1.0, rtol=1e-9)
    entropy = -(cond * np.log(np.maximum(cond, 1e-300))).sum(1)
    np.testing.assert_allclose(np.exp(entropy), 30.0, rtol=1e-3)  # every row's perplexity is the target's
    p = tsne.joint_p(x, 30.0).toarray()
    np.testing.assert_allclose(p, p.T, atol=1e-15)
    assert abs(p.sum() - 1) < 1e-9 and (np.diag(p) == 0).all()


def test_gradient_equals_the_dense_formula(blobs):
    """c * sum_j (e p_ij - q_ij) w_ij (y_i - y_j), w the 2-dof Student kernel, over every pair, with exaggeration."""
    x, _ = blobs
    p = tsne.joint_p(x, 30.0)
    y = np.random.default_rng(1).normal(size=(3, len(x))).astype(np.float32)
    yy = y.T.astype(np.float64)
    diff = yy[:, None] - yy[None]
    w = (1 + (diff**2).sum(-1) / 2) ** -1.5
    np.fill_diagonal(w, 0)
    for e in (1.0, 12.0):
        want = 3 * (((e * p.toarray() - w / w.sum()) * w)[..., None] * diff).sum(1)
        got = tsne.gradient(y, tsne._Affinities(p), e)
        np.testing.assert_allclose(got.T, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_embedding_separates_groups_and_is_reproducible(blobs):
    x, labels = blobs
    y = tsne.embed(x, seed=3, learning_rate=10.0, max_iter=400, threads=2)
    assert y.shape == (180, 3) and np.isfinite(y).all()
    centres = np.stack([y[labels == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(y[labels == c] - centres[c], axis=1).max() for c in range(3))
    gap = min(np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3))
    assert gap > 2 * spread  # each group is a cluster of its own, farther from the others than it is wide
    again = tsne.embed(x, seed=3, learning_rate=10.0, max_iter=400, threads=1)
    assert numba.get_num_threads() == 1
    np.testing.assert_array_equal(y, again)  # same seed, same embedding, whatever the thread count
    assert not np.array_equal(y, tsne.embed(x, seed=4, learning_rate=10.0, max_iter=400))


def test_label_classifier_learns_the_clusters_and_labels_new_points(blobs):
    x, labels = blobs
    labels = np.where(np.arange(len(x)) % 30 == 0, -1, labels * 2 + 5)  # any integer labels, DBSCAN noise (-1) too
    arrays = label_mlp.fit(x, labels, seed=0)
    assert list(arrays["classes"]) == [-1, 5, 7, 9]
    assert arrays["w0"].shape == (10, 100) and arrays["w1"].shape == (100, 4) and arrays["b1"].shape == (4,)
    clean = labels >= 0
    assert (DBSCANClusters.predict(arrays, x)[clean] == labels[clean]).all()  # the stored weights are the model
    new = np.eye(10)[[0, 1, 2]] * 12 + np.random.default_rng(5).normal(size=(3, 10))  # unseen points of each group
    assert list(DBSCANClusters.predict(arrays, new)) == [5, 7, 9]
    again = label_mlp.fit(x, labels, seed=0)
    np.testing.assert_array_equal(again["w1"], arrays["w1"])  # seeded
    short = label_mlp.fit(x, labels, seed=0, max_epochs=3)
    assert not np.array_equal(short["w1"], arrays["w1"])  # trained for more than 3 epochs
