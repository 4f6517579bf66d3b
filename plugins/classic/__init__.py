"""Closed-form unsupervised baselines on the pooled backbone feature: LSH and ITQ."""
import torch

from benchmark.method import HashMethod
from registry import hookimpl


class LSH(HashMethod):
    """Locality-sensitive hashing: h = W^T (x - mean), W ~ N(0, I) (sign random projections,
    Charikar 2002). The mean is taken over the training set."""
    name = "lsh"
    supervised = False
    trainable = False

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        dim = input_shapes["pooled"][0]
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("projection", torch.randn(dim, bits))

    def fit(self, inputs, labels=None):
        self.mean.copy_(inputs["pooled"].mean(0))

    def encode(self, inputs):
        return (inputs["pooled"] - self.mean) @ self.projection


class ITQ(HashMethod):
    """Iterative quantisation (Gong & Lazebnik, CVPR 2011 / TPAMI 2013): V = PCA_bits(x),
    then ``iterations`` alternations of B = sign(V R) and the orthogonal Procrustes
    R = argmin ||B - V R||_F = U W^T for the SVD V^T B = U S W^T. R starts as a random
    orthogonal matrix."""
    name = "itq"
    supervised = False
    trainable = False

    def __init__(self, bits, num_classes, input_shapes, iterations: int = 50):
        super().__init__(bits, num_classes, input_shapes)
        dim = input_shapes["pooled"][0]
        if bits > dim:
            raise ValueError(f"itq needs bits <= feature dimension ({dim})")
        self.iterations = iterations
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("projection", torch.zeros(dim, bits))

    def fit(self, inputs, labels=None):
        x = inputs["pooled"].double()
        self.mean.copy_(x.mean(0))
        x = x - x.mean(0)
        pca = principal_directions(x, self.bits)
        v = x @ pca
        start = torch.randn(self.bits, self.bits, dtype=torch.float64)  # CPU RNG, then moved
        rotation, _ = torch.linalg.qr(start.to(x.device))
        for _ in range(self.iterations):
            b = torch.where(v @ rotation >= 0, 1.0, -1.0).double()
            u, _, wt = torch.linalg.svd(b.T @ v)
            rotation = (u @ wt).T
        self.projection.copy_((pca @ rotation).float())

    def encode(self, inputs):
        return (inputs["pooled"] - self.mean) @ self.projection


def principal_directions(x: torch.Tensor, k: int) -> torch.Tensor:
    """The top-``k`` eigenvectors of ``x^T x`` (x centred), as columns. When LAPACK's
    eigensolver does not converge (a covariance of far lower rank than its size: fewer
    samples than dimensions), the right singular vectors of ``x`` span the same directions."""
    try:
        eigenvalues, eigenvectors = torch.linalg.eigh(x.T @ x)
    except torch.linalg.LinAlgError:
        _, singular, vt = torch.linalg.svd(x, full_matrices=False)
        eigenvalues, eigenvectors = singular ** 2, vt.T
    return eigenvectors[:, eigenvalues.argsort(descending=True)[:k]]


@hookimpl
def benchmark_methods():
    return [LSH, ITQ]
