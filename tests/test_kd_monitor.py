"""SpectralMonitor at K > d + 1 (issue 24 item 5): the factored O(K d) logit spectrum in eval mode, the
normalized class-mean margin against an independent dense computation, and margin_to_t_star against t*
of the init's mode set (hadainit.modes.max_margin), on a tiny float64 network with a narrow head."""

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hadainit
from hadainit.callbacks import SpectralMonitor
from hadainit.modes import max_margin

K, D = 12, 4  # fourier basis, K > d + 1: no simplex ETF in R^4


class NarrowHead(L.LightningModule):
    num_classes = K

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.body = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, D))
        self.fc = nn.Linear(D, K)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        _, self.basis0 = hadainit.hadamard_(self.fc.weight, generator=gen, return_basis=True)

    def forward(self, x):
        return self.fc(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.5)


def _data(n: int = 240):
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(n) % K
    centres = torch.randn(K, 16, generator=gen, dtype=torch.float64)
    return TensorDataset(centres[y] + 0.3 * torch.randn(n, 16, generator=gen, dtype=torch.float64), y)


def _fit(mode: str):
    model = NarrowHead().double()
    monitor = SpectralMonitor(K, classifier="fc", mode=mode)
    trainer = L.Trainer(max_epochs=2, callbacks=[monitor], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                        precision="64-true")
    with pytest.warns(UserWarning):  # no logger: said once (the values stay in monitor.history)
        trainer.fit(model, DataLoader(_data(), batch_size=40, shuffle=False))
    return model, monitor


def test_eval_mode_at_k_above_d_uses_the_factored_state_and_matches_a_dense_computation():
    model, monitor = _fit("eval")
    assert model.basis0.modes is not None and len(model.basis0.modes) == D
    assert monitor._metrics["logits"].feature_dim == D  # O(K d) state, no K x K sums
    last = monitor.history[-1]
    # the dense reference: class means of the final features, Z = W Mu^T + c, margins and ||P Z P||_*
    x, y = _data().tensors
    with torch.no_grad():
        h = model.body(x)
    mu = torch.stack([h[y == c].mean(0) for c in range(K)])
    w, c = model.fc.weight.detach(), model.fc.bias.detach()
    z = w @ mu.T + c.unsqueeze(1)  # column k: the mean logits of class k
    own = z.diagonal().clone()
    others = z.clone()
    others.fill_diagonal_(-torch.inf)
    margins = own - others.max(0).values
    p = torch.eye(K, dtype=torch.float64) - 1.0 / K
    nuclear = torch.linalg.svdvals(p @ z @ p).sum()
    assert last["class_margin_min"] == pytest.approx(margins.min().item(), rel=1e-10, abs=1e-12)
    assert last["class_margin_normalized"] == pytest.approx((margins.min() / nuclear).item(), rel=1e-10, abs=1e-12)
    # t* of the init's mode set, solved independently here
    t_star = max_margin(model.basis0.modes.tolist(), K, model.basis0.kind).value
    assert last["margin_to_t_star"] == pytest.approx(last["class_margin_normalized"] / t_star, rel=1e-12)


def test_train_mode_at_small_k_keeps_the_exact_k_by_k_state():
    _, monitor = _fit("train")
    assert monitor._metrics["logits"].feature_dim is None  # the logits of the steps themselves
    assert "margin_to_t_star" in monitor.history[-1]
