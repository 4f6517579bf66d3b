"""thesis-ddl: the integrated deep disentanglement learning method (Mao, "Deep Disentanglement
Learning for Fine-Grained Visual Retrieval", PKU thesis, the integration of contributions
1-3).

A re-implementation from the thesis abstract (only the abstract is available). The abstract
states: the integrated method optimises discrimination, robustness and compactness together,
so that binary codes trained on biased (noisy / long-tailed) data come close to real-valued
features, with similarity computation 414x faster.

What we chose (switches as in the three component plugins):

* Features: thesis-msd's ``MultiScaleNet`` (dual-path cascade with gates supervised by the
  resolution ratio, text-guided part attention), ``train_resolutions = (1, 2, 4)``.
* Training: thesis-sld's ``SampleLabelState`` over a memory of the network's features
  (label correction, sub-labels, isolation, balance), the soft-target centre loss on a hash
  layer of ``candidate_factor * bits`` outputs with CSQ centres of that length.
* ``encoding="entropy"`` (thesis-mad style): after training, ``bits`` of those outputs are
  chosen by sign entropy and decorrelation on the training set and binarised at their
  medians; ``"direct"``: a hash layer of exactly ``bits`` outputs, sign at 0.
"""
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.method import HashMethod
from plugins.csq import hash_centres
from plugins.thesis_blocks import ablation, quantisation_loss, select_dimensions
from plugins.thesis_msd import MultiScaleNet, diversity_loss, gate_loss
from plugins.thesis_sld import SampleLabelState
from registry import hookimpl

NAMES = ("s8", "s16", "s32", "pooled")


class ThesisDDL(HashMethod):
    name = "thesis-ddl"
    inputs = "stages"
    train_resolutions = (1, 2, 4)
    channels_last_inputs = True  # the stage maps' 1x1 convolutions run channels-last
    train_config = {"epochs": 20, "batch_size": 64,
                    "optimizer": {"type": "Adam", "lr": 1e-3, "weight_decay": 1e-5}}
    search_space = {"lr": ("log", 1e-4, 1e-2), "gate_weight": ("log", 0.01, 1.0),
                    "diversity": ("log", 0.01, 1.0), "quantisation": ("log", 0.01, 1.0),
                    "candidate_factor": ("int", 2, 8)}

    def __init__(self, bits, num_classes, input_shapes, dual_path: bool = True,
                 gate_supervision: bool = True, parts: str = "text", prompts: str = "bird",
                 label_correction: bool = True, sub_labels: bool = True, isolation: bool = True,
                 balance: bool = True, encoding: str = "entropy", candidate_factor: int = 4,
                 gate_weight: float = 0.1, diversity: float = 0.1, quantisation: float = 0.1):
        super().__init__(bits, num_classes, input_shapes)
        if encoding not in ("entropy", "direct"):
            raise ValueError(f"encoding must be 'entropy' or 'direct', got {encoding!r}")
        self.net = MultiScaleNet(input_shapes, dual_path, parts, prompts)
        width = bits * candidate_factor if encoding == "entropy" else bits
        self.hash = nn.Linear(self.net.dim, width)
        self.encoding = encoding
        self.gate_weight = gate_weight if (gate_supervision and dual_path) else 0.0
        self.diversity = diversity if parts != "none" else 0.0
        self.quantisation = quantisation
        self.centres = hash_centres(num_classes, width)  # training targets, not in encode
        self.state = SampleLabelState(num_classes, label_correction, sub_labels, isolation, balance)
        self.register_buffer("selected", torch.arange(bits))
        self.register_buffer("thresholds", torch.zeros(bits))

    def encode(self, inputs):
        return self.hash(self.net(inputs)[0])[:, self.selected] - self.thresholds

    def real_valued(self, inputs):
        """The multi-scale feature the hash layer reads (the binary-vs-real-valued gap)."""
        return self.net(inputs)[0]

    def _features(self, data):
        chunks = zip(*(data.inputs[n].split(256) for n in NAMES))
        outputs = [self.net(dict(zip(NAMES, c)))[0] for c in chunks]
        return torch.cat(outputs)

    def on_epoch_start(self, epoch, data):
        features = self._features(data)
        self.state.refresh(epoch, F.normalize(features, dim=1), data.labels)
        self._select(features)

    def on_train_end(self, data):
        self._select(self._features(data))

    def _select(self, features):
        if self.encoding == "entropy":
            values = self.hash(features)
            chosen = select_dimensions(values, self.bits)
            self.selected.copy_(chosen)
            self.thresholds.copy_(values[:, chosen].median(0).values)

    def loss(self, batch):
        features, gates, attention = self.net(batch["inputs"])
        u = torch.tanh(self.hash(features))
        centres = self.centres.to(u.device)  # a fixed target, kept out of the module's state
        losses = self.state.losses(batch["indices"], u, features, centres)
        losses["quantisation"] = self.quantisation * quantisation_loss(u)
        if self.gate_weight:
            ratio = batch.get("resolution", torch.ones(len(u), device=u.device)).float()
            losses["gates"] = self.gate_weight * gate_loss(gates, ratio)
        if self.diversity:
            losses["diversity"] = self.diversity * diversity_loss(attention)
        return losses


VARIANTS = [ablation(ThesisDDL, "direct", encoding="direct"),
            ablation(ThesisDDL, "nosld", label_correction=False, sub_labels=False, balance=False),
            ablation(ThesisDDL, "nomsd", dual_path=False, parts="none")]


@hookimpl
def benchmark_methods():
    return [ThesisDDL, *VARIANTS]
