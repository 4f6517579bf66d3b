"""DLBHC: Deep Learning of Binary Hash Codes (Lin, Yang, Hsiao & Chen, CVPRW 2015).

A latent layer of ``bits`` sigmoid units sits between the feature and a softmax classifier;
the network is trained with the classification loss only (cross-entropy over the classes),
and an image's code is its latent activations thresholded at 0.5:

    a = sigmoid(W_h x + b_h),   p = softmax(W_c a + b_c),   L = -log p[y],   code = [a >= 0.5].

``encode`` returns ``a - 0.5`` so the harness's binarisation (``h >= 0`` -> 1) gives exactly
the paper's threshold. Departure: the paper fine-tunes AlexNet end to end; in the frozen
regime this plugin trains the latent and classifier layers on the backbone's pooled feature.
"""
import torch
from torch import nn

from benchmark.method import HashMethod
from registry import hookimpl


class DLBHC(HashMethod):
    name = "dlbhc"
    supervised = True
    inputs = "pooled"
    train_config = {"epochs": 30, "batch_size": 64,
                    "optimizer": {"type": "SGD", "lr": 1e-2, "momentum": 0.9,
                                  "weight_decay": 5e-4}}

    def __init__(self, bits, num_classes, input_shapes):
        super().__init__(bits, num_classes, input_shapes)
        self.latent = nn.Linear(input_shapes["pooled"][0], bits)
        self.classifier = nn.Linear(bits, num_classes)  # training only; not in encode

    def latent_activations(self, inputs):
        return torch.sigmoid(self.latent(inputs["pooled"]))

    def loss(self, batch):
        logits = self.classifier(self.latent_activations(batch["inputs"]))
        return {"classification": nn.functional.cross_entropy(logits, batch["labels"])}

    def encode(self, inputs):
        return self.latent_activations(inputs) - 0.5


@hookimpl
def register_methods(register):
    register(DLBHC)
