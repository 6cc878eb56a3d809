"""How a trained ViT or CNN represents its inputs (seeds 000, 001, 004):

- `attention_maps`: CLS attention per layer and head, one instance and the mean per class (000);
- `cka`: linear CKA between all pairs of layers, minibatch / unbiased HSIC form (001);
- `distance`: mean attention distance per head and layer, in input pixels;
- `sparsity`: attention column means mu, nu = -log10 mu, top-5% columns, head/layer correlations (004);
- `ablation`: top-p vs random units of the last n layers, A0, At, Ar and psi(p, n) (004).

Every analysis streams a run's data (`common.load_analysis_run`) in batches and reads each layer
through hooks held in context managers; ViT attention comes from the one extractor,
`medvit.explain.attention.stream_attention`, one block and one head at a time. `medvit analyze
RUN_DIR KIND` writes RUN_DIR/analysis/<kind>/result.json, NPY arrays and PNG figures.
"""
from __future__ import annotations

KINDS = ("attention", "cka", "distance", "sparsity", "ablation")
