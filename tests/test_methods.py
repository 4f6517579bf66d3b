import itertools

import pytest
import torch

from plugins.classic import ITQ, LSH
from plugins.dsh import dsh_loss


def test_dsh_loss_by_hand():
    # three outputs, 2 bits -> margin m = 4; labels a, a, b
    b = torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.5, 0.0]])
    labels = torch.tensor([0, 0, 1])
    pairwise, reg = dsh_loss(b, labels, bits=2, alpha=0.01)
    # pairs: (0,1) similar, d2=4 -> 4; (0,2) dissimilar, d2=0.25+1=1.25 -> 4-1.25=2.75;
    # (1,2) dissimilar, d2=0.25+1=1.25 -> 2.75; divided by N(N-1)=6
    assert pairwise.item() == pytest.approx((4 + 2.75 + 2.75) / 6)
    # || |b|-1 ||_1 per row: 0, 0, 0.5+1=1.5 -> mean 0.5, times alpha
    assert reg.item() == pytest.approx(0.01 * 0.5)


def test_itq_rotation_is_orthogonal_and_reduces_quantisation_error():
    torch.manual_seed(0)
    x = torch.randn(500, 20) @ torch.randn(20, 20)
    itq = ITQ(bits=8, num_classes=0, input_shapes={"pooled": (20,)})
    itq.fit({"pooled": x})
    centred = x - x.mean(0)
    v = itq.encode({"pooled": x})
    assert torch.allclose(v, centred @ itq.projection, atol=1e-4)
    # projection = PCA basis (orthonormal columns) times an orthogonal rotation
    gram = itq.projection.T @ itq.projection
    assert torch.allclose(gram, torch.eye(8), atol=1e-4)
    # 50 alternations quantise better than the random initial rotation alone
    itq_plain = ITQ(bits=8, num_classes=0, input_shapes={"pooled": (20,)}, iterations=0)
    torch.manual_seed(0)
    itq_plain.fit({"pooled": x})
    error = lambda p: ((torch.sign(centred @ p) - centred @ p) ** 2).sum()  # noqa: E731
    assert error(itq.projection) < error(itq_plain.projection)


def test_lsh_centres_features():
    torch.manual_seed(0)
    x = torch.randn(100, 6) + 5.0
    lsh = LSH(bits=4, num_classes=0, input_shapes={"pooled": (6,)})
    lsh.fit({"pooled": x})
    assert torch.allclose(lsh.mean, x.mean(0))
    codes = (lsh.encode({"pooled": x}) >= 0).float().mean(0)
    assert ((codes > 0.2) & (codes < 0.8)).all()  # balanced bits, not all ones


def test_itq_principal_directions_survive_a_rank_deficient_covariance(monkeypatch):
    """When eigh fails to converge, the SVD gives the same principal subspace."""
    import torch
    from plugins.classic import principal_directions
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(30, 200, generator=generator, dtype=torch.float64)
    x = x - x.mean(0)
    direct = principal_directions(x, 8)

    def no_convergence(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
    monkeypatch.setattr(torch.linalg, "eigh", no_convergence)
    fallback = principal_directions(x, 8)
    # same subspace: the projectors agree (signs and order inside ties may differ)
    assert torch.allclose(direct @ direct.T, fallback @ fallback.T, atol=1e-8)
